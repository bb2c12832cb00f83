"""What LAM adds to one action call, next to the bare client call, for http and MCP actions.

Two targets, each reached three ways in the same run:

- http: ``GET /api/services/web`` on the tests' aiohttp service (``tests/support/
  http_service.py``) on 127.0.0.1, a small JSON object, through a declared call
  ``api.service`` of an ``HttpConnector``;
- mcp: the scripted FastMCP server (``tests/support/mcp_server.py``) run as a stdio
  subprocess, tool ``lookup`` (it returns ``"value of <key>"``), through an
  ``McpConnector``. Not ``mcp-server-git``: every ``git_status`` forks ``git``, whose
  milliseconds of noise would swamp what LAM adds; ``lookup`` does no work of its own.

The three ways:

- bare: the client call alone. http: ``session.get(url)`` and ``response.json()`` on an
  aiohttp session made like the connector's (``trust_env=False``, no cookies, the same
  ``Accept``); mcp: ``ClientSession.call_tool`` on a session this script opens itself to a
  second instance of the same server (after ``list_tools``, as the connector does);
- connector: ``Catalog.validate`` (the action's ``Params``) then ``action.run`` with an
  ``ActionContext``: the connector's own wrapper (http: allow-list check per hop, capped
  read, rendering and secret masking; mcp: the supervisor's timeout and crash watch,
  output capping and rendering);
- governed: ``Engine.ask(Request(text="run ACTION key=value"))`` with a policy that lets
  the requester run it outright: the stored request, intent, the offline planner, policy
  for planning and again right before the step, the executor (validation, timeout, retry
  bookkeeping, output capping), and every transition committed with its hash-chained
  audit entry to the embedded ``SqliteStore`` (a file in a temporary directory).

The connector and governed ways share one started connector per target. Each iteration
makes one call of each way per target, rotating their order, so all see the same
conditions. As in the tests, the aiohttp server shares this process's event loop (its
handler's time is in all three ways alike); the two MCP servers are subprocesses.

    python -m bench.connectors [--calls 300] [--rounds 5]

Reports medians over the rounds of each round's median per call; never run as a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client

from bot.audit import Redactor
from bot.engine import Engine, EngineOptions
from bot.logs import configure_logging
from bot.models import Request
from bot.planning.aliases import AliasPlanner
from bot.policy import Policy
from bot.store.sqlite import SqliteStore
from connectors import ActionContext, Catalog
from connectors.http import DEFAULT_ACCEPT, HttpConnector, HttpSettings
from connectors.mcp import McpConnector, McpSettings
from tests.support.http_service import HttpService, serving

REPO = Path(__file__).resolve().parent.parent
MCP_SERVER = [sys.executable, str(REPO / "tests" / "support" / "mcp_server.py")]
POLICY = "g, user:bench, role:bench, *\np, role:bench, *, *, *, run, allow\n"
WAYS = ("bare", "connector", "governed")
WARM_UP_CALLS = 20

Call = Callable[[], Awaitable[None]]


class Target:
    """One action reached the three ways; ``commits`` is store transactions per request."""

    def __init__(self, label: str, action_id: str, args: dict[str, str], bare: Call) -> None:
        self.label = label
        self.action_id = action_id
        self.args = args
        self.bare = bare
        self.commits = 0

    def ways(self, catalog: Catalog, engine: Engine) -> dict[str, Call]:
        action = catalog.get(self.action_id)
        context = ActionContext(
            request_id="bench",
            step_id="s1",
            environment="dev",
            dry_run=False,
            idempotency_key="bench:s1",
            timeout=action.timeout,
        )
        text = f"run {self.action_id} " + " ".join(f"{k}={v}" for k, v in self.args.items())

        async def connector() -> None:
            params = catalog.validate(self.action_id, self.args)
            result = await action.run(params, context)
            assert result.output, result

        async def governed() -> None:
            record = await engine.ask(Request(text=text, requester="user:bench"))
            assert record.state == "succeeded", record.reason
            self.commits = record.version

        return {"bare": self.bare, "connector": connector, "governed": governed}


async def bare_http(stack: AsyncExitStack, url: str) -> Call:
    """A GET of ``url`` and its JSON, on a session made like the http connector's."""
    session = await stack.enter_async_context(
        aiohttp.ClientSession(
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
        )
    )
    headers = {"Accept": DEFAULT_ACCEPT}

    async def call() -> None:
        async with session.get(url, headers=headers, allow_redirects=False) as response:
            assert response.status == 200, response.status
            body = await response.json()
        assert body["name"] == "web", body

    return call


async def bare_mcp(stack: AsyncExitStack) -> Call:
    """``call_tool("lookup")`` on a session of our own to a second instance of the server."""
    server = StdioServerParameters(command=MCP_SERVER[0], args=MCP_SERVER[1:])
    read, write = await stack.enter_async_context(stdio_client(server))
    session = await stack.enter_async_context(ClientSession(read, write))
    await session.initialize()
    await session.list_tools()

    async def call() -> None:
        result = await session.call_tool("lookup", {"key": "web"})
        assert not result.isError and isinstance(result.content[0], types.TextContent)
        assert result.content[0].text == "value of web", result

    return call


def load_policy(directory: Path) -> Policy:
    directory.mkdir()
    (directory / "model.conf").write_text((REPO / "policies" / "model.conf").read_text())
    (directory / "policy.csv").write_text(POLICY)
    return Policy.load(directory)


async def measure(
    targets: list[Target], ways: dict[str, dict[str, Call]], calls: int, rounds: int
) -> dict[tuple[str, str], list[float]]:
    """Per (target, way), each round's median seconds per call."""
    for target in targets:
        for call in ways[target.label].values():
            for _ in range(WARM_UP_CALLS):
                await call()
    medians: dict[tuple[str, str], list[float]] = {
        (t.label, way): [] for t in targets for way in WAYS
    }
    for round_number in range(rounds):
        samples: dict[tuple[str, str], list[float]] = {key: [] for key in medians}
        for index in range(calls):
            # Rotating the order keeps any cost of going first or last off one way.
            order = WAYS[index % 3 :] + WAYS[: index % 3]
            for target in targets:
                for way in order:
                    call = ways[target.label][way]
                    start = time.perf_counter()
                    await call()
                    samples[target.label, way].append(time.perf_counter() - start)
        for key, values in samples.items():
            medians[key].append(statistics.median(values))
        print(f"round {round_number + 1}/{rounds} done", file=sys.stderr)
    return medians


def report(
    targets: list[Target], medians: dict[tuple[str, str], list[float]], calls: int, rounds: int
) -> None:
    print(
        f"calls per round: {calls} of each way per target, rounds: {rounds};"
        " medians over the rounds of each round's median per call"
    )
    for target in targets:
        bare, connector, governed = (statistics.median(medians[target.label, way]) for way in WAYS)
        print(f"{target.label}")
        print(f"  bare client call:            {bare * 1e3:7.3f} ms")
        print(
            f"  connector (validate + run):  {connector * 1e3:7.3f} ms"
            f"  {connector / bare:5.2f}x bare  (+{(connector - bare) * 1e3:.3f} ms)"
        )
        print(
            f"  governed (Engine.ask):       {governed * 1e3:7.3f} ms"
            f"  {governed / bare:5.2f}x bare  (+{(governed - bare) * 1e3:.3f} ms;"
            f" engine alone +{(governed - connector) * 1e3:.3f} ms,"
            f" {target.commits} store transactions)"
        )


async def main(calls: int, rounds: int) -> None:
    # As the CLI runs by default: warnings only, so the figures are not about printing.
    configure_logging(log_format="json", level="warning", redactor=Redactor())
    api = HttpService()
    async with AsyncExitStack() as stack:
        origin = await stack.enter_async_context(serving(api))
        http = HttpConnector(
            "api",
            HttpSettings.model_validate(
                {
                    "base_url": origin + "/api",
                    "calls": {
                        "service": {
                            "description": "Show one service.",
                            "method": "GET",
                            "url": "/services/{service}",
                            "params": {"service": {"pattern": "[a-z][a-z0-9-]*"}},
                        }
                    },
                }
            ),
        )
        mcp = McpConnector(
            "tools",
            McpSettings.model_validate({"command": MCP_SERVER, "tools": {"include": ["lookup"]}}),
        )
        for connector in (http, mcp):
            await connector.start(lambda: None)
            stack.push_async_callback(connector.aclose)
        targets = [
            Target(
                "http: GET a small JSON object (aiohttp server on 127.0.0.1)",
                "api.service",
                {"service": "web"},
                await bare_http(stack, f"{origin}/api/services/web"),
            ),
            Target(
                "mcp: tool 'lookup' over stdio (FastMCP subprocess)",
                "tools.lookup",
                {"key": "web"},
                await bare_mcp(stack),
            ),
        ]
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lam-bench-")))
        store = await SqliteStore.open(home / "lam.db")
        stack.push_async_callback(store.aclose)
        catalog = Catalog([http, mcp])
        engine = Engine(
            store=store,
            policy=load_policy(home / "policies"),
            catalog=catalog,
            planner=AliasPlanner(),
            options=EngineOptions(),
        )
        ways = {target.label: target.ways(catalog, engine) for target in targets}
        medians = await measure(targets, ways, calls, rounds)
        assert await engine.verify_audit() > 0
    report(targets, medians, calls, rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.calls, arguments.rounds))
