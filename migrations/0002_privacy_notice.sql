-- reason: remember when each person was shown what is stored about them and for how long, so it is shown once.
ALTER TABLE users ADD COLUMN privacy_notice_at TEXT;
CREATE INDEX jobs_by_chat ON jobs (platform, chat_id, created_at);
