"""Where one client's discord.py talks to: Discord itself, or (in tests and benchmarks) a loopback fake.

discord.py builds every REST and webhook URL from the class attribute ``discord.http.Route.BASE``
and connects a plain ``Client`` to the class attribute ``DiscordWebSocket.DEFAULT_GATEWAY``.
Setting those would point every client of the process elsewhere, for good, as a side effect of
making one.  Instead the URLs of this client alone are rewritten on their way out, in the two
places all of its traffic passes:

* :class:`EndpointHTTPClient`, the client's HTTP client: REST requests and the gateway connection;
* :class:`EndpointWebhookAdapter`: webhook and interaction requests (deferrals, follow-ups,
  edits).  discord.py sends those through the adapter held in the context variable
  ``discord.webhook.async_.async_context``; :meth:`Endpoints.context` is a context with ours set,
  for the task the client's gateway runs in (every event handler inherits it), and
  :meth:`Endpoints.active` sets it around calls that start elsewhere (the core's deliveries).

With Discord's own addresses (the default settings) every rewrite is the identity.

:meth:`Endpoints.one_attempt` is the other thing the webhook adapter adds: requests made inside it
are tried once.  discord.py waits out a 429 and retries a 5xx up to five times (sleeping 1, 3,
5... s) while holding the webhook's lock, so a best-effort edit (a status, a live preview) would
otherwise hold up the follow-ups that carry the pictures; inside the block a 429 or 5xx is raised
at once, as an ``HTTPException`` like any other refusal.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import aiohttp
import discord.gateway
import discord.http
import yarl
from discord.errors import DiscordServerError, HTTPException
from discord.http import json_or_text
from discord.webhook.async_ import AsyncWebhookAdapter, async_context

_one_attempt: contextvars.ContextVar[bool] = contextvars.ContextVar("mmpp_discord_one_attempt", default=False)


class Endpoints:
    """The API base and gateway one client uses instead of Discord's."""

    def __init__(self, api_base: str, gateway_url: str = "") -> None:
        self.api_base = api_base.rstrip("/")
        self.gateway = yarl.URL(gateway_url) if gateway_url else None
        self.webhook_adapter = EndpointWebhookAdapter(self)

    def rest(self, url: str) -> str:
        """A URL discord.py built from ``Route.BASE``, moved to this client's API base."""
        library_base = discord.http.Route.BASE
        if url.startswith(library_base) and library_base != self.api_base:
            return self.api_base + url[len(library_base) :]
        return url

    def gateway_url(self, url: str) -> str:
        """The default gateway (with discord.py's query) moved to this client's gateway; others as they are."""
        if self.gateway is None:
            return url
        parsed = yarl.URL(url)
        if parsed.with_query(None) == discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY.with_query(None):
            return str(self.gateway.with_query(parsed.query))
        return url

    def context(self) -> contextvars.Context:
        """A copy of the current context in which discord.py's webhook requests use this client's addresses."""
        context = contextvars.copy_context()
        context.run(async_context.set, self.webhook_adapter)
        return context

    @contextmanager
    def active(self) -> Iterator[None]:
        """This client's addresses for webhook requests made inside the block (in the current task only)."""
        token = async_context.set(self.webhook_adapter)
        try:
            yield
        finally:
            async_context.reset(token)

    @staticmethod
    @contextmanager
    def one_attempt() -> Iterator[None]:
        """Webhook-adapter requests made inside the block are tried once: a 429 or 5xx is raised, not retried."""
        token = _one_attempt.set(True)
        try:
            yield
        finally:
            _one_attempt.reset(token)


class EndpointHTTPClient(discord.http.HTTPClient):
    """discord.py's HTTP client, sending this client's REST requests and gateway connection to its endpoints."""

    def __init__(self, *arguments: Any, endpoints: Endpoints, **keywords: Any) -> None:
        super().__init__(*arguments, **keywords)
        self.endpoints = endpoints

    async def request(self, route: discord.http.Route, **keywords: Any) -> Any:
        route.url = self.endpoints.rest(route.url)
        return await super().request(route, **keywords)

    async def ws_connect(self, url: str, *, compress: int = 0) -> aiohttp.ClientWebSocketResponse:
        return await super().ws_connect(self.endpoints.gateway_url(url), compress=compress)


class EndpointWebhookAdapter(AsyncWebhookAdapter):
    """discord.py's webhook adapter, sending interaction and webhook requests to the client's endpoints."""

    def __init__(self, endpoints: Endpoints) -> None:
        super().__init__()
        self.endpoints = endpoints

    async def request(self, route: discord.http.Route, session: aiohttp.ClientSession, **keywords: Any) -> Any:
        route.url = self.endpoints.rest(route.url)
        if _one_attempt.get():
            session = OneAttemptSession(session)  # type: ignore[assignment]
        return await super().request(route, session, **keywords)


class OneAttemptSession:
    """The part of an aiohttp session discord.py's webhook adapter uses, answering a 429 or 5xx with an exception.

    The adapter retries only when a response comes back with those statuses; raised while the
    response is opened, they leave its loop (and its lock) at once.
    """

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def request(self, method: str, url: str, **keywords: Any) -> _OneAttemptResponse:
        return _OneAttemptResponse(self._session.request(method, url, **keywords))


class _OneAttemptResponse:
    def __init__(self, pending: Any) -> None:
        self._pending = pending

    async def __aenter__(self) -> aiohttp.ClientResponse:
        response: aiohttp.ClientResponse = await self._pending.__aenter__()
        if response.status == 429 or response.status >= 500:
            try:
                data = await json_or_text(response)
            finally:
                await self._pending.__aexit__(None, None, None)
            raise (DiscordServerError if response.status >= 500 else HTTPException)(response, data)
        return response

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self._pending.__aexit__(kind, error, traceback)
