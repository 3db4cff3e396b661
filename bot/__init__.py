"""The chat side of MMPP: platform adapters over one platform-neutral core.

It never imports torch, diffusers or ``engine`` (except the torch-free
``mmpp.contract``); jobs reach the worker by Celery task name.
"""
