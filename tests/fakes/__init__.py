"""Loopback fakes of the chat platforms' APIs, driven by the real client libraries in tests.

Each fake is a small aiohttp server on 127.0.0.1 that speaks the platform's real wire format, so the
adapters are tested through discord.py / python-telegram-bot themselves rather than through mocks.
"""
