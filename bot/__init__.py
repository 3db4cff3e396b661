"""The chat side of MMPP: platform adapters over one platform-neutral core.

It never imports torch, diffusers or ``engine`` (except the torch-free
``engine.contracts``); jobs reach the worker by Celery task name.
"""
