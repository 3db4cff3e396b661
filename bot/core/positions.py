"""Where each waiting job stands in its queue, read once for all of them.

Every job a process follows shows its place in line ("3 jobs ahead") and refreshes it about once a second
while it waits.  Asked one job at a time, that is one COUNT per waiting job per second: with two hundred
people waiting behind the broker's admission limit, that was most of what the database did, and on a
shared PostgreSQL each of those reads queued in front of the reads that a new command waits for (its first
reply).  One read of every unfinished job's id, shared by all the followers for a second, answers them all.

A snapshot is read again when it is older than ``fresh_seconds``, when it does not know the job asked about
(a job newer than the snapshot would otherwise be shown too near the front), and after this process finished
a job (:meth:`QueuePositions.forget`), so that the people behind it see their place move at once.  A job
finished by another process moves them at the next refresh, within ``fresh_seconds``.

The same snapshot tells the follower of a waiting job whether to read its row again at all
(:meth:`QueuePositions.still_waiting`): a job still listed as waiting for the broker is unchanged, so the
hundreds of people behind a full broker cost one read a second in all, not one row read each.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable

from bot.storage import Job, Storage, UnfinishedJobs


class QueuePositions:
    def __init__(self, storage: Storage, monotonic: Callable[[], float], fresh_seconds: float) -> None:
        self._storage = storage
        self._monotonic = monotonic
        self._fresh_seconds = fresh_seconds
        self._snapshot: UnfinishedJobs | None = None
        self._read_at = 0.0
        #: Followers asking together share one read instead of each starting its own.
        self._reading = asyncio.Lock()

    async def ahead(self, job: Job) -> int:
        """How many unfinished jobs of the same queue are older than ``job`` (so painted before it)."""
        snapshot = await self._current(job)
        return bisect_left(snapshot.by_queue.get(job.queue, []), job.id)

    async def still_waiting(self, job: Job) -> bool:
        """Whether ``job`` still waits in the database for the broker, as of a snapshot at most ``fresh_seconds``
        old: then its row is as its follower last read it (only sending, failing or deleting it changes a
        waiting job, and each takes it out of the waiting set).  ``False`` means: read the row again."""
        return job.id in (await self._current(job)).waiting

    async def _current(self, job: Job) -> UnfinishedJobs:
        snapshot = self._snapshot
        if snapshot is None or self._stale() or not self._knows(snapshot, job):
            async with self._reading:
                snapshot = self._snapshot
                if snapshot is None or self._stale() or not self._knows(snapshot, job):
                    snapshot = await self._storage.unfinished_jobs()
                    self._snapshot, self._read_at = snapshot, self._monotonic()
        return snapshot

    def forget(self) -> None:
        """A job of this process finished: the next question reads the queue again."""
        self._snapshot = None

    def _stale(self) -> bool:
        return self._monotonic() - self._read_at > self._fresh_seconds

    @staticmethod
    def _knows(snapshot: UnfinishedJobs, job: Job) -> bool:
        """Whether the snapshot was read after ``job`` was made (so every job older than it is in it, unless
        finished).  A job is known when some job at least as new is in the snapshot."""
        newest = max((ids[-1] for ids in snapshot.by_queue.values() if ids), default=0)
        return job.id <= newest
