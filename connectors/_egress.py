"""Where the http connector may send requests: the allow-list, and redirects followed by hand.

aiohttp's own redirect handling would follow a ``Location`` anywhere and keep the
credentials; here every hop is checked against the allow-list before it is sent, at most
``max_redirects`` are followed, and credentials go only to the origin of the first request.
Bodies are read in chunks and the read stops at the size cap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from bot.errors import ActionFailed

DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
_HOST_LABELS = re.compile(
    r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$"
)


class EgressRefused(ActionFailed):
    """A request (or a redirect hop) would go to a host outside the allow-list; not sent."""


class ResponseTooLarge(ActionFailed):
    """The response body passed the size cap; the read stopped there and nothing is kept."""


@dataclass(frozen=True)
class AllowedHost:
    """One ``allow_hosts`` entry: ``host``, ``host:port`` or ``*.domain[:port]``."""

    host: str
    """Lower-case, IDNA-encoded; for a wildcard, the domain after ``*.``."""
    port: int | None
    """``None``: only the default port of the URL's scheme (80 for http, 443 for https)."""
    wildcard: bool = False

    @classmethod
    def parse(cls, entry: str) -> AllowedHost:
        """The entry as written in lam.yaml; ``ValueError`` says what is wrong with it."""
        wildcard = entry.startswith("*.")
        try:
            parsed = URL("//" + entry.removeprefix("*."))
            port = parsed.explicit_port
        except ValueError as error:
            raise ValueError(
                f"allow_hosts entry {entry!r} is not host or host:port: {error}"
            ) from None
        host = parsed.raw_host
        if not host or parsed.raw_path not in ("", "/") or parsed.user or parsed.query_string:
            raise ValueError(
                f"allow_hosts entry {entry!r} must be a host or host:port, like api.example.com"
                " or 10.0.0.5:8443, without a scheme or path"
            )
        if not (_HOST_LABELS.match(host) or ":" in host):
            raise ValueError(f"allow_hosts entry {entry!r} is not a valid host name")
        return cls(host=host.lower(), port=port, wildcard=wildcard)

    @classmethod
    def origin_of(cls, url: URL) -> AllowedHost:
        """The exact host and port ``url`` reaches: what a declared URL allows by default."""
        assert url.raw_host is not None
        return cls(host=url.raw_host.lower(), port=url.port)

    def admits(self, url: URL) -> bool:
        host = (url.raw_host or "").lower()
        if self.wildcard:
            if not host.endswith("." + self.host):
                return False
        elif host != self.host:
            return False
        expected = DEFAULT_PORTS.get(url.scheme) if self.port is None else self.port
        return url.port == expected

    def __str__(self) -> str:
        host = f"*.{self.host}" if self.wildcard else self.host
        host = f"[{host}]" if ":" in host else host
        return host if self.port is None else f"{host}:{self.port}"


def describe_host(url: URL) -> str:
    """``host:port`` as the allow-list would need it, for messages."""
    host = url.raw_host or ""
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{url.port}"


class AllowList:
    """The hosts one connector instance may reach."""

    def __init__(self, connector: str, entries: Iterable[AllowedHost]) -> None:
        self.connector = connector
        self.entries = tuple(dict.fromkeys(entries))

    def check(self, url: URL, *, context: str) -> None:
        """Refuse ``url`` unless it is plain http(s) to an allowed host and port.

        ``context`` starts the message: what was not done, e.g. "'api.get': not sent".
        """
        if url.scheme not in DEFAULT_PORTS or not url.raw_host:
            raise EgressRefused(f"{context}: {str(url)!r} is not an http or https URL")
        if url.user is not None or url.password is not None:
            raise EgressRefused(f"{context}: the URL carries credentials, which LAM never sends")
        if not any(entry.admits(url) for entry in self.entries):
            raise EgressRefused(
                f"{context}: host {describe_host(url)} is not in the allow-list of connector"
                f" {self.connector!r}; add it to its allow_hosts if LAM should reach it"
            )


@dataclass(frozen=True)
class Outgoing:
    """One request as the connector wants it sent, before redirects."""

    method: str
    url: URL
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    """Already serialised; ``Content-Type`` is among ``headers`` when there is a body."""


@dataclass(frozen=True)
class Received:
    """The final response: status, headers and the whole body (within the cap)."""

    status: int
    reason: str
    url: URL
    headers: CIMultiDictProxy[str]
    body: bytes


async def send(
    session: aiohttp.ClientSession,
    request: Outgoing,
    *,
    credentials: Mapping[str, str],
    allow: AllowList,
    context: str,
    max_redirects: int,
    max_bytes: int,
) -> Received:
    """Send ``request``, following redirects by hand; each hop is checked before it is sent.

    ``credentials`` are extra headers sent only while the request stays on the origin
    (scheme, host and port) it started at. Errors from aiohttp propagate; the caller
    decides which are worth a retry.
    """
    origin = request.url.origin()
    method, url, body = request.method, request.url, request.body
    headers = dict(request.headers)
    for hop in range(max_redirects + 1):
        where = context if hop == 0 else f"{context}: redirect {hop} to {str(url)!r} not followed"
        allow.check(url, context=where)
        sent_headers = {**headers, **credentials} if url.origin() == origin else headers
        async with session.request(
            method, url, headers=sent_headers, data=body, allow_redirects=False
        ) as response:
            location = response.headers.get("Location")
            if response.status in REDIRECT_STATUSES and location is not None:
                try:
                    target = response.url.join(URL(location))
                except ValueError:
                    raise ActionFailed(
                        f"{context}: the server redirected to an invalid URL {location!r}"
                    ) from None
                method, body = _redirected(response.status, method, body)
                if body is None:
                    headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
                url = target
                continue
            payload = await _read_capped(response, max_bytes, context=context)
            return Received(
                status=response.status,
                reason=response.reason or "",
                url=response.url,
                headers=response.headers,
                body=payload,
            )
    raise ActionFailed(f"{context}: stopped after {max_redirects} redirects (last to {url})")


def _redirected(status: int, method: str, body: bytes | None) -> tuple[str, bytes | None]:
    """The method and body of the next hop, as browsers and RFC 9110 treat each status."""
    if status == 303 and method != "HEAD":
        return "GET", None
    if status in (301, 302) and method == "POST":
        return "GET", None
    return method, body


async def _read_capped(response: aiohttp.ClientResponse, limit: int, *, context: str) -> bytes:
    too_large = f"{context}: the response is larger than {limit} bytes; nothing was kept"
    declared = response.content_length
    if declared is not None and declared > limit:
        response.close()
        raise ResponseTooLarge(too_large)
    body = bytearray()
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        body += chunk
        if len(body) > limit:
            # Closing drops the connection: the rest of the body is never read.
            response.close()
            raise ResponseTooLarge(too_large)
    return bytes(body)
