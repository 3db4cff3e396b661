-- reason: several bot processes share one database (Discord shards split between processes); a job is followed and delivered by the one process whose claim it holds, so no picture is posted twice.
-- One row per claimed job: who holds it (a process's stable name, e.g. its shards) and since when, renewed before
-- each delivery; a claim older than a follower can live (timeout + delivery retries) may be taken over.
-- ON DELETE CASCADE: /forget and a deleted job take their claim with them.
CREATE TABLE delivery_claims (
    job_id INTEGER PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    claimant TEXT NOT NULL,
    claimed_at TEXT NOT NULL
);
