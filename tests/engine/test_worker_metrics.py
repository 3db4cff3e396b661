"""The worker's /metrics and /healthz endpoints."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from engine import worker_metrics


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_metrics_and_health() -> None:
    server = worker_metrics.serve_metrics(0, host="127.0.0.1")
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        worker_metrics.health.update(engine="not loaded", last_error=None)
        status, body = fetch(base + "/healthz")
        assert status == 503 and json.loads(body)["engine"] == "not loaded"
        worker_metrics.health.update(engine="ready")
        assert fetch(base + "/healthz")[0] == 200
        worker_metrics.record_result(
            {"pictures": [{}, {}], "timings": {"denoise": 1.5, "total": 2.0}, "error_code": None}
        )
        worker_metrics.record_result({"pictures": [], "timings": {}, "error_code": "NO_FACE"})
        status, text = fetch(base + "/metrics")
        assert status == 200
        assert 'mmpp_worker_jobs_total{code="NO_FACE",outcome="failed"}' in text
        assert 'mmpp_worker_stage_seconds_count{stage="denoise"}' in text
        assert "mmpp_worker_pictures_total" in text
        assert fetch(base + "/other")[0] == 404
    finally:
        server.shutdown()
