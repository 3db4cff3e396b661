-- reason: the bot's whole state: people, their jobs and selfies, the pictures made, and ratings.
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    platform TEXT NOT NULL,
    platform_user_id TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    UNIQUE (platform, platform_user_id)
);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL UNIQUE,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    platform TEXT NOT NULL,
    -- The platform event that asked for the job (interaction id, update id):
    -- the same event delivered twice creates one job.
    event_key TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    style TEXT NOT NULL,
    prompt TEXT NOT NULL DEFAULT '',
    mode TEXT,
    picture_count INTEGER NOT NULL,
    seed INTEGER,
    parent_job_id INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    progress_done INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT,
    -- JSON the adapter needs to reply later (channel, interaction token, chat id).
    reply_context TEXT NOT NULL DEFAULT '{}',
    status_message_id TEXT,
    result_meta TEXT,
    created_at TEXT NOT NULL,
    enqueued_at TEXT,
    finished_at TEXT,
    delivered_at TEXT,
    UNIQUE (platform, event_key)
);
CREATE INDEX jobs_undelivered ON jobs (platform, state) WHERE delivered_at IS NULL;
CREATE INDEX jobs_by_user ON jobs (user_id, created_at);

CREATE TABLE selfies (
    job_id INTEGER PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    data BLOB NOT NULL,
    -- NULL while the job runs; then now + retention, or deleted at once.
    expires_at TEXT
);

CREATE TABLE pictures (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    png BLOB NOT NULL,
    -- Where the picture was posted, as the adapter names it, to map reactions back.
    message_ref TEXT,
    UNIQUE (job_id, position)
);
CREATE INDEX pictures_by_message ON pictures (message_ref);

CREATE TABLE ratings (
    picture_id INTEGER NOT NULL REFERENCES pictures (id) ON DELETE CASCADE,
    rater_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    score INTEGER NOT NULL CHECK (score BETWEEN 1 AND 5),
    source TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (picture_id, rater_id)
);
