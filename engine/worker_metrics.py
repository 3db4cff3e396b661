"""Worker metrics (Prometheus) and a health endpoint.

Served from a small thread in the worker process that runs jobs (one per
GPU, so one port per worker process): ``/metrics`` in Prometheus' text
format, ``/healthz`` answering 200 once the engine is loaded and 503 before
or after a failed load, so an orchestrator restarts a worker that cannot
serve.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

logger = logging.getLogger(__name__)

JOBS = Counter("mmpp_worker_jobs_total", "Jobs finished by the worker, by outcome and error code", ["outcome", "code"])
PICTURES = Counter("mmpp_worker_pictures_total", "Pictures generated")
STAGE_SECONDS = Histogram(
    "mmpp_worker_stage_seconds",
    "Seconds per job stage",
    ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
)
health: dict[str, Any] = {"engine": "not loaded", "last_error": None}


def record_result(payload: dict[str, Any]) -> None:
    code = payload.get("error_code")
    JOBS.labels("failed" if code else "done", code or "").inc()
    PICTURES.inc(len(payload.get("pictures", [])))
    for stage, seconds in (payload.get("timings") or {}).items():
        STAGE_SECONDS.labels(stage).observe(float(seconds))


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/metrics":
            body, status, kind = generate_latest(), 200, CONTENT_TYPE_LATEST
        elif self.path == "/healthz":
            ready = health["engine"] == "ready"
            body, status, kind = json.dumps(health).encode(), 200 if ready else 503, "application/json"
        else:
            body, status, kind = b"not found", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the job log."""


def serve_metrics(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _Handler)
    threading.Thread(target=server.serve_forever, name="mmpp-metrics", daemon=True).start()
    logger.info("worker metrics on :%d/metrics, health on :%d/healthz", server.server_port, server.server_port)
    return server
