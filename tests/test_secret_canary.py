"""Canary secrets planted in every connector's settings never leave LAM.

Each connector gets secrets of its own, resolved from ``env:`` and ``file:`` references in
a ``lam.yaml``, and real servers that echo them back: the http service returns the
``Authorization`` header in a success and in a 401, the MCP servers answer with their
environment and request headers, PostgreSQL quotes the password in an error. The LLM
planner (the real ``openai`` client against the scripted server) plans the steps and
revises after each failure, so failed output reaches its prompts. Then every output LAM
has is searched for every canary: the audit trail, the request records, the JSON log lines
(structlog's and the standard library's, at debug), and every request the model received.
Positive checks show each secret did reach its destination, so the search cannot pass
because nothing ran.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bot.audit import Redactor
from bot.config import Settings, load_settings
from bot.engine import Engine
from bot.logs import configure_logging
from bot.models import Request, RequestRecord, StepResult
from bot.wiring import open_engine
from tests.support.http_service import HttpService, serving
from tests.support.mcp_server import build_server, serve_http
from tests.support.openai_server import RecordedRequest, ScriptedOpenAI, data_blocks, tool_calls
from tests.support.policies import write_policy

BASE_DSN = os.environ.get(
    "LAM_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres"
)
SCRIPTED_MCP_SERVER = str(Path(__file__).parent / "support" / "mcp_server.py")
MASK = "***"
POLICY = "g, user:alice, role:ops, *\np, role:ops, staging, *, *, run, allow\n"

pytestmark = pytest.mark.postgres


@dataclass(frozen=True)
class Canaries:
    """One secret per connector and kind; none is a part of another."""

    http: str
    mcp_env: str
    mcp_header: str
    pg_password: str
    openai: str
    ambient: str
    """In LAM's environment but named by no setting: the redactor does not know it, so
    only the scrubbed environments of runbooks and MCP servers keep it in."""

    @classmethod
    def fresh(cls) -> Canaries:
        return cls(*(f"canary-{f.name}-{uuid.uuid4().hex}" for f in fields(cls)))

    def found_in(self, text: str) -> list[str]:
        """The names of the canaries that occur in ``text``."""
        return [f.name for f in fields(self) if getattr(self, f.name) in text]


@pytest.fixture
def canaries() -> Canaries:
    return Canaries.fresh()


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """Undo, on leaving, the logging configured inside: structlog's and the root logger's."""
    saved = structlog.get_config()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        structlog.configure(**saved)
        for handler in root.handlers:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def redactor(capsys: pytest.CaptureFixture[str]) -> Iterator[Redactor]:
    """The process-wide redactor of ``lam``; the logging it is given is undone afterwards.

    ``capsys`` comes first, so the logging configured in the test writes into its stderr.
    """
    with logging_restored():
        yield Redactor()


@pytest.fixture
async def credentials_table(canaries: Canaries) -> AsyncIterator[str]:
    """A table whose one row holds the database password, as careless schemas do."""
    schema = f"lam_canary_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(
        BASE_DSN, autocommit=True, connect_timeout=5
    ) as admin:
        await admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        table = sql.Identifier(schema, "credentials")
        await admin.execute(sql.SQL("CREATE TABLE {} (name text, secret text)").format(table))
        await admin.execute(
            sql.SQL("INSERT INTO {} VALUES ('db', %s)").format(table), [canaries.pg_password]
        )
    yield f"{schema}.credentials"
    async with await psycopg.AsyncConnection.connect(
        BASE_DSN, autocommit=True, connect_timeout=5
    ) as admin:
        await admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, canaries: Canaries) -> Path:
    """The secret files and variables the configurations refer to, and LAM's own settings."""
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "mcp_token").write_text(canaries.mcp_header + "\n", encoding="utf-8")
    dsn = make_conninfo(BASE_DSN, password=canaries.pg_password)
    (directory / "pg_dsn").write_text(dsn, encoding="utf-8")
    monkeypatch.delenv("REDIS_URL", raising=False)
    for name, value in {
        "LAM_HOME": str(tmp_path / "home"),
        "LAM_POLICY_DIR": str(write_policy(tmp_path / "policies", POLICY)),
        "OPENAI_API_KEY": canaries.openai,
        "LAM_CANARY_HTTP_TOKEN": canaries.http,
        "LAM_CANARY_MCP_TOKEN": canaries.mcp_env,
        "LAM_CANARY_AMBIENT": canaries.ambient,
    }.items():
        monkeypatch.setenv(name, value)
    return directory


def http_instance(api: str) -> dict[str, Any]:
    """The http service behind a bearer token from ``env:``."""
    return {
        "type": "http",
        "name": "api",
        "settings": {
            "base_url": f"{api}/api",
            "auth": {"type": "bearer", "token": "env:LAM_CANARY_HTTP_TOKEN"},
            "calls": {
                "echo": {"description": "Echo the request's headers.", "url": "/echo"},
                "whoami": {"description": "Who the API thinks LAM is.", "url": "/whoami"},
            },
        },
    }


def mcp_stdio_instance() -> dict[str, Any]:
    """The scripted MCP server as a subprocess, with a secret from ``env:`` in its environment."""
    return {
        "type": "mcp",
        "name": "tools",
        "settings": {
            "command": [sys.executable, SCRIPTED_MCP_SERVER],
            "env": {"TOKEN": {"secret": "env:LAM_CANARY_MCP_TOKEN"}},
            "tools": {"include": ["env", "fail_with_env"]},
        },
    }


def postgres_instance(secrets: Path) -> dict[str, Any]:
    """The test database, its whole dsn (password included) from ``file:``."""
    return {"type": "postgres", "name": "db", "settings": {"dsn": f"file:{secrets / 'pg_dsn'}"}}


def every_connector(*, api: str, mcp_url: str, secrets: Path) -> list[dict[str, Any]]:
    """One instance of each connector type (MCP both ways), every secret a reference."""
    token_file = secrets / "mcp_token"
    mcp_http = {
        "type": "mcp",
        "name": "remote",
        "settings": {
            "url": mcp_url,
            "headers": {"Authorization": {"secret": f"file:{token_file}", "prefix": "Bearer "}},
            "tools": {"include": ["header"]},
        },
    }
    shell = {
        "type": "shell",
        "name": "shell",
        "settings": {
            "include_builtin": False,
            "sandbox": "off",
            # The secret file is readable by LAM's user only, not by 'nobody'.
            "run_as": os.geteuid(),
            "runbooks": {
                "environment": {"description": "The runbook's environment.", "argv": ["env"]},
                "token_file": {
                    "description": "Print the MCP token file.",
                    "argv": ["cat", str(token_file)],
                },
            },
        },
    }
    return [http_instance(api), mcp_stdio_instance(), mcp_http, postgres_instance(secrets), shell]


def load_lam(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redactor: Redactor,
    connectors: list[dict[str, Any]],
) -> Settings:
    """``lam``'s settings for this ``lam.yaml``, and its logging: JSON at debug, masked."""
    config = tmp_path / "lam.yaml"
    config.write_text(json.dumps({"connectors": connectors}, indent=2), encoding="utf-8")
    assert "canary-" not in config.read_text(encoding="utf-8")
    monkeypatch.setenv("LAM_CONFIG", str(config))
    settings = load_settings()
    redactor.add(settings.secrets())
    configure_logging(log_format="json", level="debug", redactor=redactor)
    return settings


async def open_lam(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redactor: Redactor,
    connectors: list[dict[str, Any]],
) -> Engine:
    """The engine ``lam`` opens for this ``lam.yaml``, every connector started."""
    settings = load_lam(tmp_path, monkeypatch, redactor, connectors)
    engine = await open_engine(settings, redactor)
    assert not engine.catalog.failures
    return engine


async def stored(engine: Engine) -> dict[str, str]:
    """Every audit event and request record, as JSON, by what it is."""
    found = {}
    async for event in engine.store.audit_events():
        found[f"audit #{event.seq} {event.kind}"] = event.model_dump_json()
    for record in await engine.store.history(limit=100):
        found[f"record {record.id}"] = (await engine.store.get(record.id)).model_dump_json()
    return found


def sent_to_model(server: ScriptedOpenAI) -> dict[str, str]:
    """Every model request, but the Authorization header that legitimately holds the key."""
    return {
        f"model request #{request.number}": json.dumps(
            [
                request.path,
                {k: v for k, v in request.headers.items() if k.lower() != "authorization"},
                request.body,
            ]
        )
        for request in server.requests
    }


def leaks(canaries: Canaries, written: dict[str, str]) -> dict[str, list[str]]:
    """Where each canary was found, by the name of the output; empty when none leaked."""
    return {where: found for where, text in written.items() if (found := canaries.found_in(text))}


def sees(expected: str) -> Callable[[RecordedRequest], None]:
    """A check that the failed step a revision request shows the model says ``expected``."""

    def check(request: RecordedRequest) -> None:
        (prompt,) = request.contents("user")
        (error,) = data_blocks(prompt, "step_error")
        assert expected in error

    return check


def results_of(record: RequestRecord) -> dict[str, StepResult]:
    """Every step result of every plan the request ran, by ``<revision>/<step id>``."""
    attempts = [*(attempt.results for attempt in record.previous), record.results]
    return {
        f"{revision}/{result.step_id}": result
        for revision, results in enumerate(attempts)
        for result in results
    }


async def test_no_connector_secret_reaches_any_output(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    canaries: Canaries,
    redactor: Redactor,
    secrets: Path,
    credentials_table: str,
) -> None:
    """Secrets that every connector's server echoes, in output and in failures, stay masked."""
    service = HttpService()
    mcp_server, _ = build_server()
    async with (
        serving(service) as api,
        serve_http(mcp_server, token=canaries.mcp_header) as mcp_url,
        ScriptedOpenAI.running() as model,
    ):
        monkeypatch.setenv("OPENAI_BASE_URL", model.base_url)
        monkeypatch.setenv("LAM_MODEL", "lam-test-model")
        monkeypatch.setenv("LAM_MAX_REVISIONS", "3")

        model.enqueue(
            tool_calls(
                ("api__echo", {}),
                ("tools__env", {"name": "TOKEN"}),
                ("tools__env", {"name": "LAM_CANARY_AMBIENT"}),
                ("remote__header", {"name": "authorization"}),
                (
                    "db__query",
                    {"sql": "SELECT current_user, current_setting('application_name') AS app"},
                ),
                ("shell__environment", {}),
                ("shell__token_file", {}),
                ("api__whoami", {}),
            ),
            # Each revision is asked after a failure whose text held a secret.
            tool_calls(
                ("db__query", {"sql": f"SELECT secret::int FROM {credentials_table}"}),
                check=sees(
                    f"""HTTP 401 Unauthorized: {{"error": "invalid credentials 'Bearer {MASK}'"}}"""
                ),
            ),
            tool_calls(
                ("tools__fail_with_env", {"name": "TOKEN"}),
                check=sees(f'invalid input syntax for type integer: "{MASK}"'),
            ),
            tool_calls(
                ("remote__header", {"name": "authorization"}),
                check=sees(f"Error executing tool fail_with_env: {MASK}"),
            ),
        )
        caplog.set_level(logging.DEBUG)
        engine = await open_lam(
            tmp_path,
            monkeypatch,
            redactor,
            every_connector(api=api, mcp_url=mcp_url, secrets=secrets),
        )
        try:
            record = await engine.ask(
                Request(
                    text="check every system end to end",
                    requester="user:alice",
                    environment="staging",
                )
            )
            written = await stored(engine)
        finally:
            await engine.aclose()
        model.assert_done()
    written |= sent_to_model(model)
    written["stderr"] = capsys.readouterr().err

    # Every step ran, and every secret reached the server it was meant for.
    results = results_of(record)
    assert (record.state, record.revisions) == ("succeeded", 3), record.reason
    assert [(key, result.status) for key, result in results.items()] == [
        *((f"0/s{n}", "succeeded") for n in range(1, 8)),
        ("0/s8", "failed"),
        ("1/s1", "failed"),
        ("2/s1", "failed"),
        ("3/s1", "succeeded"),
    ]
    bearer = f"Bearer {canaries.http}"
    assert [seen.headers.get("Authorization") for seen in service.received] == [bearer] * 2
    assert f"headers.Authorization: Bearer {MASK}\n" in results["0/s1"].output
    assert results["0/s2"].output == MASK
    assert results["0/s3"].output == "(unset)"
    assert results["0/s4"].output == f"Bearer {MASK}" == results["3/s1"].output
    assert "lam/db" in results["0/s5"].output
    assert "PATH=/usr/bin:/bin" in results["0/s6"].output
    assert results["0/s7"].output.strip() == MASK
    openai_key = f"Bearer {canaries.openai}"
    assert [request.headers["Authorization"] for request in model.requests] == [openai_key] * 4
    # The MCP client's debug records held the echoed header; stderr has them, masked, as
    # JSON lines like every other line.
    assert canaries.mcp_header in caplog.text
    lines = [json.loads(line) for line in written["stderr"].splitlines()]
    assert ("debug", "mcp.client.streamable_http") in {
        (line["level"], line.get("logger")) for line in lines
    }

    assert not leaks(canaries, written)


async def test_a_dsn_password_the_database_returns_is_masked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    canaries: Canaries,
    redactor: Redactor,
    secrets: Path,
    credentials_table: str,
) -> None:
    """A row holding the password of the dsn comes back masked in the result and the audit."""
    engine = await open_lam(tmp_path, monkeypatch, redactor, [postgres_instance(secrets)])
    try:
        record = await engine.ask(
            Request(
                text=f'run db.query "sql=SELECT name, secret FROM {credentials_table}"',
                requester="user:alice",
                environment="staging",
            )
        )
        written = await stored(engine)
    finally:
        await engine.aclose()
    written["stderr"] = capsys.readouterr().err

    assert record.state == "succeeded", record.reason
    assert "db   | " in record.results[0].output
    assert not leaks(canaries, written)
