"""Bot metrics (Prometheus) and the health endpoint, on one small aiohttp server.

``/metrics``: jobs by state (read from the database every scrape interval),
jobs finished by outcome and error code, time from request to delivery,
ratings stored, queue depth per Celery queue (with Redis), jobs holding a
place in the broker and jobs waiting for one per queue, whether the broker
takes jobs and how often it refused one, the selfie bytes received and kept.
``/healthz``: 200 when the database answers, the broker answers and takes
jobs, and every adapter is connected; 503 with the failing part named otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

logger = logging.getLogger(__name__)

JOBS_BY_STATE = Gauge("mmpp_bot_jobs", "Jobs in the database by state", ["state"])
JOBS_FINISHED = Counter(
    "mmpp_bot_jobs_finished_total", "Jobs delivered, by outcome and error code", ["outcome", "code"]
)
JOBS_CREATED = Counter("mmpp_bot_jobs_created_total", "Jobs created, by platform", ["platform"])
DELIVERY_SECONDS = Histogram(
    "mmpp_bot_delivery_seconds",
    "Seconds from a request to its delivered reply",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900),
)
VARIANT_ASSIGNMENTS = Counter(
    "mmpp_bot_variant_assignments_total",
    "Jobs given a variant of their style, by style and variant",
    ["style", "variant"],
)
VARIANT_PROMOTIONS = Counter(
    "mmpp_bot_variant_promotions_total",
    "Variants made their style's default, by style and by whom (ratings or operator)",
    ["style", "decided_by"],
)
RATINGS = Counter("mmpp_bot_ratings_total", "Ratings stored or withdrawn, by source", ["source"])
QUEUE_DEPTH = Gauge("mmpp_queue_depth", "Messages waiting in a Celery queue", ["queue"])
BROKER_ACCEPTING = Gauge("mmpp_bot_broker_accepting", "1 while the broker takes jobs, 0 while it refuses them")
BROKER_REFUSALS = Counter(
    "mmpp_bot_broker_refusals_total", "Jobs the broker refused to take (full, unreachable, refused)", ["kind"]
)
JOBS_IN_BROKER = Gauge(
    "mmpp_bot_jobs_in_broker", "Unfinished jobs holding one of their queue's places in the broker", ["queue"]
)
JOBS_WAITING = Gauge(
    "mmpp_bot_jobs_waiting_for_broker", "Jobs waiting in the database for a place in their queue", ["queue"]
)
SELFIE_BYTES = Histogram(
    "mmpp_bot_selfie_bytes",
    "Bytes of each ordered selfie: as received, and as kept and sent (upright, at most 1024 px)",
    ["stage"],
    buckets=(50e3, 100e3, 200e3, 400e3, 800e3, 1.6e6, 3.2e6, 6.4e6, 12.8e6, 25.6e6),
)

HealthCheck = Callable[[], Awaitable[bool]]


class MetricsServer:
    def __init__(self, port: int, checks: Mapping[str, HealthCheck], refresh: Callable[[], Awaitable[None]]) -> None:
        self.port = port
        self.checks = checks
        self.refresh = refresh
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "0.0.0.0", self.port).start()
        logger.info("bot metrics on :%d/metrics, health on :%d/healthz", self.port, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(self.refresh(), 5)
        except Exception:
            logger.warning("refreshing the metrics failed", exc_info=True)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        results = {}
        for name, check in self.checks.items():
            try:
                results[name] = bool(await asyncio.wait_for(check(), 5))
            except Exception:
                logger.warning("health check %s failed", name, exc_info=True)
                results[name] = False
        return web.json_response(results, status=200 if all(results.values()) else 503)
