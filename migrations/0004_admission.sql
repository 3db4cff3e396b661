-- reason: admission control: the broker holds a bounded number of jobs per queue, and the rest wait here, in order.
-- The Celery queue the job goes to, decided when it is ordered (its mode, or its style's default mode).
ALTER TABLE jobs ADD COLUMN queue TEXT;
-- When the job was given one of its queue's places in the broker; enqueued_at is when the broker took it.
ALTER TABLE jobs ADD COLUMN admitted_at TEXT;
UPDATE jobs SET admitted_at = enqueued_at WHERE enqueued_at IS NOT NULL;
-- The feeder's questions: which queues have waiting jobs, the oldest of each, the jobs ahead of one.
CREATE INDEX jobs_by_queue ON jobs (state, queue, id);
