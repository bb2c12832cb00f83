"""The http connector's egress rules against real aiohttp services: the allow-list, and
redirects that may or may not be followed, never with credentials to another host."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.errors import ActionFailed, ConfigError, RetryableError
from connectors._egress import AllowedHost
from tests.support.connector_actions import data_of, run_action
from tests.support.http_connector import CANARY, MakeHttpConnector, call
from tests.support.http_service import HttpService, serving


@pytest.fixture
async def other() -> AsyncIterator[tuple[HttpService, str]]:
    """A second service on another port: a host redirects may or may not lead to."""
    elsewhere = HttpService()
    async with serving(elsewhere) as origin:
        yield elsewhere, origin


def test_allow_list_entries_admit_exactly_what_they_say() -> None:
    """'host' admits default ports, 'host:port' that port, '*.domain' subdomains only."""
    from yarl import URL

    plain, ported, wildcard = (
        AllowedHost.parse(e) for e in ("API.example.com", "10.0.0.5:8443", "*.example.org")
    )
    assert plain.admits(URL("https://api.example.com/x")) and plain.admits(
        URL("http://api.example.com")
    )
    assert not plain.admits(URL("https://api.example.com:8443/x"))
    assert ported.admits(URL("https://10.0.0.5:8443")) and not ported.admits(
        URL("https://10.0.0.5")
    )
    assert wildcard.admits(URL("https://a.b.example.org")) and not wildcard.admits(
        URL("https://example.org")
    )
    assert not plain.admits(URL("https://api.example.com.evil.net/"))
    with pytest.raises(ValueError, match="not a valid host name"):
        AllowedHost.parse("bad_host!")


async def test_a_declared_url_outside_the_allow_list_is_refused_at_once(
    make_http_connector: MakeHttpConnector, http_service: tuple[HttpService, str]
) -> None:
    """A call to a host outside the allow-list is a configuration error naming the host."""
    with pytest.raises(
        ConfigError, match=r"host 127\.0\.0\.1:\d+ is not in the allow-list of connector 'api'"
    ):
        await make_http_connector(allow_hosts=["api.example.com"], calls={"c": call("/text")})


async def test_a_fetched_documents_server_must_already_be_allowed(
    make_http_connector: MakeHttpConnector,
    http_service: tuple[HttpService, str],
    other: tuple[HttpService, str],
) -> None:
    """A document fetched over HTTP cannot widen the allow-list by naming another server."""
    elsewhere, other_origin = other
    document = f"{http_service[1]}/openapi.json?server={other_origin}/api"
    with pytest.raises(ConfigError, match=r"is not in the allow-list of connector 'api'"):
        await make_http_connector(base_url=None, openapi=document, operations=["getService"])
    assert elsewhere.received == []


async def test_a_redirect_to_another_allowed_host_is_followed_without_credentials(
    make_http_connector: MakeHttpConnector,
    http_service: tuple[HttpService, str],
    other: tuple[HttpService, str],
) -> None:
    """Credentials go to the first origin only: a redirect to another allowed host gets none."""
    api, origin = http_service
    elsewhere, other_origin = other
    other_host = other_origin.replace("127.0.0.1", "localhost")
    connector = await make_http_connector(
        allow_hosts=[origin.removeprefix("http://"), other_host.removeprefix("http://")],
        calls={"hop": call("/redirect", params={"to": {}})},
    )
    result = await run_action(connector, "hop", to=f"{other_host}/api/echo")
    assert api.received[-1].headers["Authorization"] == f"Bearer {CANARY}"
    assert elsewhere.paths() == ["/api/echo"]
    assert "Authorization" not in elsewhere.received[0].headers
    assert "Authorization" not in data_of(result)["headers"]
    same_origin = await run_action(connector, "hop", to="/api/whoami")
    assert same_origin.data == {"user": "lam"}


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirect_outside_the_allow_list_is_not_followed(
    make_http_connector: MakeHttpConnector, other: tuple[HttpService, str], status: int
) -> None:
    """A redirect to a port the allow-list leaves out fails naming the host; nothing reaches it."""
    elsewhere, other_origin = other
    connector = await make_http_connector(
        calls={"hop": call("/redirect", params={"to": {}, "status": {"type": "integer"}})}
    )
    with pytest.raises(ActionFailed) as error:
        await run_action(connector, "hop", to=f"{other_origin}/api/echo", status=status)
    port = other_origin.rsplit(":", 1)[1]
    assert (
        f"redirect 1 to '{other_origin}/api/echo' not followed: host 127.0.0.1:{port} is not"
        in str(error.value)
    )
    assert "allow-list of connector 'api'" in str(error.value)
    assert not isinstance(error.value, RetryableError)
    assert elsewhere.received == []


async def test_redirects_stop_after_the_limit(
    make_http_connector: MakeHttpConnector, http_service: tuple[HttpService, str]
) -> None:
    """A redirect loop ends after max_redirects hops with a clear failure."""
    connector = await make_http_connector(max_redirects=3, calls={"loop": call("/redirect")})
    with pytest.raises(ActionFailed, match="stopped after 3 redirects"):
        await run_action(connector, "loop")
    assert len(http_service[0].received) == 4
