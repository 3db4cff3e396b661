-- reason: a style variant may name the engine family that renders it (where a deployment serves several); the job records the family it was sent for, so its queue, its request and its history agree after a restart or a catalogue edit.
-- '' for every job of a variant that names no family (all jobs before this migration): the family of the bot's own
-- queue (MMPP_QUEUE), whatever its workers run; what actually rendered a job is in its result_meta ("family").
ALTER TABLE jobs ADD COLUMN family TEXT NOT NULL DEFAULT '';
