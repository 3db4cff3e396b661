-- reason: Discord allows one IDENTIFY per 5 s per bucket (shard_id % max_concurrency) across all of a bot's processes; the processes sharing this database book their IDENTIFY slots here, so two starting together do not both IDENTIFY in one bucket within 5 s.
-- One row per bucket: the earliest moment (Unix seconds, time.time(): a wall clock the bot's machines share) the
-- bucket's next IDENTIFY may be sent.  DOUBLE PRECISION, not REAL: PostgreSQL's REAL is 4 bytes, too coarse for
-- seconds since 1970 (SQLite reads DOUBLE PRECISION as its REAL, 8 bytes).
CREATE TABLE identify_slots (
    bucket INTEGER PRIMARY KEY,
    next_at DOUBLE PRECISION NOT NULL
);
