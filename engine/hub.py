"""Decide once per process whether the Hugging Face Hub can be reached.

Without a network, every Hub lookup retries with back-off for about 25 s
before failing; a worker that probes the base model, the LoRAs and the
safety checker would sit for minutes before falling back.  One quick probe
(name resolution and a TCP connect) settles it, and ``HF_HUB_OFFLINE=1``
then makes every library read only the local cache.  This must run before
``huggingface_hub`` is imported: it reads the variable at import time.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from urllib.parse import urlparse

logger = logging.getLogger(__name__)
PROBE_TIMEOUT_SECONDS = 3.0


def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    address = urlparse(endpoint or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = address.hostname or "huggingface.co", address.port or (443 if address.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def prefer_offline_when_unreachable() -> bool:
    """Set ``HF_HUB_OFFLINE=1`` when the Hub cannot be reached; returns whether we are offline."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if "huggingface_hub" in sys.modules:
        logger.debug("huggingface_hub already imported; leaving HF_HUB_OFFLINE alone")
        return False
    if hub_reachable():
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    logger.warning("The Hugging Face Hub is unreachable: using only locally cached weights (HF_HUB_OFFLINE=1).")
    return True
