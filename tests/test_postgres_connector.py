"""The postgres connector against a real PostgreSQL: read-only queries, writes, limits, errors.

The server is the one on 127.0.0.1:5432 (trust auth, database ``test``), or the one
``LAM_TEST_POSTGRES_DSN`` names. Every test works in a schema of its own module, made
with a random name and dropped afterwards; no other schema is touched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import ValidationError

from bot.engine import Engine
from bot.errors import ActionFailed, RetryableError
from bot.models import Request
from connectors import ConnectorConfig, start_connectors
from connectors.base import Connector
from connectors.postgres import PostgresConnector, PostgresSettings
from tests.conftest import EngineFactory
from tests.support.actions import ScriptedConnector
from tests.support.connector_actions import data_of, run_action
from tests.support.policies import write_policy
from tests.support.redis_server import free_port
from tests.support.waiting import eventually

DSN = os.environ.get("LAM_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 dbname=test user=postgres")
CANARY = "canary-pw-7f3e9c2a"

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def schema() -> Iterator[str]:
    """A schema of this module's own, dropped with everything in it afterwards."""
    name = f"lam_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(DSN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as error:
        shown = make_conninfo(**{k: v for k, v in conninfo_to_dict(DSN).items() if k != "password"})
        pytest.fail(
            f"the postgres tests need PostgreSQL at {shown!r} (or set LAM_TEST_POSTGRES_DSN),"
            f" and it is unreachable: {error}",
            pytrace=False,
        )
    yield name
    with psycopg.connect(DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def items(schema: str) -> str:
    """A fresh table of five items in the test schema; its unqualified name."""
    name = f"items_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DSN, autocommit=True, connect_timeout=5) as admin:
        table = sql.Identifier(schema, name)
        admin.execute(
            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, name text, price numeric(10,2))").format(
                table
            )
        )
        admin.execute(
            sql.SQL(
                "INSERT INTO {} SELECT g, 'item ' || g, g * 1.25 FROM generate_series(1,5) g"
            ).format(table)
        )
    return name


def admin_query(schema: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows seen by a connection of the test's own, outside the connector."""
    with psycopg.connect(DSN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        return admin.execute(query, params or None).fetchall()


def dsn_file(directory: Path, dsn: str = DSN) -> str:
    path = directory / f"dsn-{uuid.uuid4().hex[:6]}"
    path.write_text(dsn + "\n", encoding="utf-8")
    return f"file:{path}"


async def started(
    tmp_path: Path, schema: str, name: str = "pg", **settings: Any
) -> PostgresConnector:
    connector = PostgresConnector(
        name,
        PostgresSettings.model_validate(
            {"dsn": dsn_file(tmp_path), "search_path": [schema], **settings}
        ),
    )
    await connector.start(lambda: None)
    return connector


def database_name() -> str:
    with psycopg.connect(DSN, connect_timeout=5) as admin:
        row = admin.execute("SELECT current_database()").fetchone()
    assert row is not None
    return str(row[0])


# Settings and declaration


def test_settings_take_a_dsn_reference_or_fields_not_both(tmp_path: Path) -> None:
    """A dsn excludes the separate fields, one of the two ways is required, and typos fail."""
    with pytest.raises(ValidationError, match="give either dsn or host, not both"):
        PostgresSettings.model_validate({"dsn": dsn_file(tmp_path), "host": "db"})
    with pytest.raises(ValidationError, match="say where the database is"):
        PostgresSettings.model_validate({"host": "db"})
    with pytest.raises(ValidationError, match="a secret must be a reference"):
        PostgresSettings.model_validate({"dsn": DSN})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PostgresSettings.model_validate({"host": "db", "dbname": "x", "statment_timeout": 1})
    fields = PostgresSettings.model_validate({"host": "db", "dbname": "orders", "port": 6432})
    assert fields.target() == "db:6432, database 'orders'"
    assert fields.statement_timeout == 10 and fields.row_cap == 1000 and fields.allow_execute


def test_an_unparsable_dsn_is_refused_without_showing_its_text(tmp_path: Path) -> None:
    """A broken dsn is named as broken, but none of its text (it may hold a password) is shown."""
    broken = dsn_file(tmp_path, f"host=db password={CANARY} {CANARY}tail")
    with pytest.raises(ValidationError) as caught:
        PostgresSettings.model_validate({"dsn": broken})
    assert "not a valid libpq connection string" in str(caught.value)
    assert "canary" not in str(caught.value)


async def test_actions_are_declared_with_risk_and_the_database_as_resource(
    tmp_path: Path, schema: str
) -> None:
    """query is a read, execute a write with dry run; both name the database for policy."""
    connector = await started(tmp_path, schema)
    assert isinstance(connector, Connector) and PostgresConnector.type_name == "postgres"
    actions = {a.id: a for a in connector.actions()}
    query, execute = actions["pg.query"], actions["pg.execute"]
    assert (query.risk, query.idempotent, query.supports_dry_run) == ("read", True, True)
    assert (execute.risk, execute.idempotent, execute.supports_dry_run) == ("write", False, True)
    params = query.params.model_validate({"sql": "SELECT 1"})
    assert query.resource(params) == database_name()
    with pytest.raises(ValidationError, match="reaches database .* only"):
        query.params.model_validate({"sql": "SELECT 1", "database": "postgres-other"})
    with pytest.raises(ValidationError, match="is blank"):
        query.params.model_validate({"sql": "  "})
    readonly = await started(tmp_path, schema, allow_execute=False)
    assert [a.id for a in readonly.actions()] == ["pg.query"]


# query


async def test_query_returns_an_aligned_table_and_json_data(
    tmp_path: Path, schema: str, items: str
) -> None:
    """A query's rows come back as a readable table and as JSON-safe columns and rows."""
    connector = await started(tmp_path, schema)
    result = await run_action(
        connector,
        "query",
        sql=f"SELECT id, name, price, NULL::text AS note, '\\xdead'::bytea AS raw,"
        f" '2024-05-06 07:08:09+00'::timestamptz AS at,"
        f" 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS ref, '{{\"k\": [1]}}'::jsonb AS doc"
        f" FROM {items} WHERE id <= %s ORDER BY id",
        params=[2],
    )
    lines = result.output.splitlines()
    assert lines[0].split(" | ")[:3] == ["id", "name  ", "price"]
    assert lines[1].startswith("---+-") and lines[-1] == "(2 rows)"
    assert lines[2].startswith(" 1 | item 1 |  1.25 | NULL | \\xdead | 2024-05-06T07:08:09+00:00")
    assert lines[2].endswith('| {"k": [1]}')
    bars = [
        [i for i, char in enumerate(line) if char == mark]
        for line, mark in zip(lines[:4], "|+||", strict=True)
    ]
    assert len(bars[0]) == 7 and bars.count(bars[0]) == 4, "columns are aligned"
    assert result.data == {
        "columns": ["id", "name", "price", "note", "raw", "at", "ref", "doc"],
        "rows": [
            [
                n,
                f"item {n}",
                f"{n * 1.25:.2f}",
                None,
                "\\xdead",
                "2024-05-06T07:08:09+00:00",
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                {"k": [1]},
            ]
            for n in (1, 2)
        ],
        "row_count": 2,
        "truncated": False,
    }
    json.dumps(result.data)


async def test_a_literal_percent_needs_no_escaping_without_params(
    tmp_path: Path, schema: str, items: str
) -> None:
    """Without params the SQL goes as written, so LIKE 'item%' means what it says."""
    connector = await started(tmp_path, schema)
    result = await run_action(
        connector, "query", sql=f"SELECT count(*) AS n FROM {items} WHERE name LIKE 'item%'"
    )
    assert result.data == {"columns": ["n"], "rows": [[5]], "row_count": 1, "truncated": False}


async def test_row_cap_truncates_and_says_so(tmp_path: Path, schema: str) -> None:
    """A result longer than row_cap is cut at row_cap rows, marked, and never read whole."""
    connector = await started(tmp_path, schema, row_cap=3)
    # generate_series in the select list streams; in FROM it is materialised first.
    result = await run_action(connector, "query", sql="SELECT generate_series(1, 50000000) AS g")
    assert result.data == {
        "columns": ["g"],
        "rows": [[1], [2], [3]],
        "row_count": 3,
        "truncated": True,
    }
    assert result.output.splitlines()[-1].startswith("(3 rows; row_cap 3 reached")


async def test_wide_results_stay_under_the_output_limit(tmp_path: Path, schema: str) -> None:
    """Rows that would pass output_limit_bytes are dropped whole from the text and the data."""
    connector = await started(tmp_path, schema, output_limit_bytes=2048)
    result = await run_action(
        connector,
        "query",
        sql="SELECT g, repeat('x', 100) AS filler FROM generate_series(1, 200) g",
    )
    assert len(result.output.encode()) <= 2048
    data = data_of(result)
    assert data["truncated"] is True and 0 < data["row_count"] < 200
    assert len(json.dumps(result.data).encode()) <= 2048
    assert "the table shows the first" in result.output.splitlines()[-1]


async def test_a_write_through_query_is_refused(tmp_path: Path, schema: str, items: str) -> None:
    """An INSERT sent through query fails in its read-only transaction and changes nothing."""
    connector = await started(tmp_path, schema)
    with pytest.raises(
        ActionFailed, match="cannot execute INSERT in a read-only transaction"
    ) as caught:
        await run_action(
            connector, "query", sql=f"INSERT INTO {items} VALUES (99, 'sneaky', 0) RETURNING id"
        )
    assert "pg.query runs read-only" in str(caught.value)
    assert "Changes go through pg.execute" in str(caught.value)
    with pytest.raises(ActionFailed, match="read-only transaction"):
        await run_action(
            connector, "query", sql=f"DO $$ BEGIN EXECUTE 'DROP TABLE {items}'; END $$"
        )
    readonly = await started(tmp_path, schema, allow_execute=False)
    with pytest.raises(ActionFailed, match="makes no changes \\(allow_execute is false\\)"):
        await run_action(readonly, "query", sql=f"DELETE FROM {items} RETURNING id")
    assert admin_query(schema, f"SELECT count(*) FROM {items}") == [(5,)]


async def test_several_statements_in_one_call_are_refused_whole(
    tmp_path: Path, schema: str, items: str
) -> None:
    """'SELECT 1; DROP TABLE' runs no part, through query, execute, a dry run or a COMMIT."""
    connector = await started(tmp_path, schema)
    sneaks = [
        f"SELECT 1; DROP TABLE {items}",
        f"SELECT 1; COMMIT; DROP TABLE {items}",
        f"SELECT 1; SET TRANSACTION READ WRITE; DELETE FROM {items}",
    ]
    for sneak in sneaks:
        for action, dry_run in (("query", False), ("query", True), ("execute", True)):
            with pytest.raises(ActionFailed, match="one SQL statement per call"):
                await run_action(connector, action, sql=sneak, dry_run=dry_run)
    with pytest.raises(ActionFailed, match="one SQL statement per call"):
        await run_action(
            connector, "execute", sql=f"DELETE FROM {items} WHERE id = 1; DELETE FROM {items}"
        )
    assert admin_query(schema, f"SELECT count(*) FROM {items}") == [(5,)]


async def test_a_statement_that_returns_no_rows_is_refused_by_query(
    tmp_path: Path, schema: str
) -> None:
    """query is for statements with rows; a SET or COMMIT is refused with where to go instead."""
    connector = await started(tmp_path, schema)
    with pytest.raises(ActionFailed, match="returns none; nothing was changed"):
        await run_action(connector, "query", sql="COMMIT")


async def test_a_dry_run_query_shows_the_plan_without_running(
    tmp_path: Path, schema: str, items: str
) -> None:
    """A dry-run query is explained, not run: pg_sleep in it does not make it wait."""
    connector = await started(tmp_path, schema, statement_timeout=2)
    result = await run_action(
        connector,
        "query",
        dry_run=True,
        sql=f"SELECT pg_sleep(60), * FROM {items} WHERE id = %s",
        params=[1],
    )
    assert result.output.startswith("dry run: the query was planned, not run:")
    data = data_of(result)
    assert data["dry_run"] is True and any(items in line for line in data["plan"])


async def test_syntax_errors_carry_postgres_message_and_position(
    tmp_path: Path, schema: str, items: str
) -> None:
    """A syntax error names the action, the SQLSTATE and where PostgreSQL stopped reading."""
    connector = await started(tmp_path, schema)
    with pytest.raises(ActionFailed) as caught:
        await run_action(connector, "query", sql=f"SELECT * FORM {items}")
    message = str(caught.value)
    assert message.startswith("pg.query failed (SQLSTATE 42601). PostgreSQL said:")
    assert 'syntax error at or near "FORM"' in message
    assert f"LINE 1: SELECT * FORM {items}\n" in message and message.endswith("^")
    with pytest.raises(
        ActionFailed, match="was not run: the query has 1 placeholders but 2 parameters"
    ):
        await run_action(connector, "query", sql="SELECT %s", params=[1, 2])


# Timeouts and cancellation


BACKEND_DEADLINE = 10.0
"""Seconds a backend has to start or end; no event says it did, so the tests poll."""


async def backends(application_name: str) -> list[tuple[str, str]]:
    """The state and query of every server backend opened under ``application_name``."""
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as admin:
        cursor = await admin.execute(
            "SELECT state, query FROM pg_stat_activity WHERE application_name = %s",
            [application_name],
        )
        return [(str(state), str(query)) for state, query in await cursor.fetchall()]


async def test_statement_timeout_fails_clearly_and_calls_keep_working(
    tmp_path: Path, schema: str, items: str
) -> None:
    """A statement past statement_timeout is cancelled by the server; the next call works."""
    connector = await started(tmp_path, schema, name="pgslow", statement_timeout=0.5)
    with pytest.raises(
        ActionFailed, match="^pgslow.query: the statement timed out after 0.5 s and was cancelled$"
    ):
        await run_action(connector, "query", sql="SELECT pg_sleep(5)")
    with pytest.raises(
        ActionFailed,
        match="timed out after 0.5 s and was cancelled; the transaction was rolled back",
    ):
        await run_action(
            connector,
            "execute",
            sql=f"UPDATE {items} SET name = 'late' WHERE pg_sleep(5) IS NOT NULL",
        )
    assert admin_query(schema, f"SELECT count(*) FROM {items} WHERE name = 'late'") == [(0,)]
    result = await run_action(connector, "query", sql="SELECT 1 AS one")
    assert result.data == {"columns": ["one"], "rows": [[1]], "row_count": 1, "truncated": False}
    await eventually(
        lambda: _no_backends("lam/pgslow"),
        "the connector's connections to close",
        deadline=BACKEND_DEADLINE,
    )


async def _no_backends(application_name: str) -> bool:
    return not await backends(application_name)


async def test_a_shorter_executor_budget_shortens_the_statement_timeout(
    tmp_path: Path, schema: str
) -> None:
    """When the step's own timeout is shorter, the server cancels before the executor must."""
    connector = await started(tmp_path, schema, statement_timeout=30)
    with pytest.raises(ActionFailed, match="timed out after 0.9 s"):
        await run_action(connector, "query", sql="SELECT pg_sleep(10)", budget=1.0)


async def test_cancelling_the_step_cancels_the_query_on_the_server(
    tmp_path: Path, schema: str
) -> None:
    """A cancelled step leaves no statement running and no connection open on the server."""
    connector = await started(tmp_path, schema, name="pgcancel", statement_timeout=60)
    marker = f"cancel-me-{uuid.uuid4().hex[:8]}"
    task = asyncio.create_task(
        run_action(connector, "query", sql=f"SELECT pg_sleep(60) /* {marker} */")
    )

    async def running() -> bool:
        return any(
            state == "active" and marker in query for state, query in await backends("lam/pgcancel")
        )

    await eventually(running, "the query to start", deadline=BACKEND_DEADLINE)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(
        lambda: _no_backends("lam/pgcancel"),
        "the cancelled query's connection to go",
        deadline=BACKEND_DEADLINE,
    )


# execute


async def test_execute_commits_and_reports_rows_affected(
    tmp_path: Path, schema: str, items: str
) -> None:
    """A write is committed; the rows affected and the RETURNING rows come back."""
    connector = await started(tmp_path, schema)
    result = await run_action(
        connector,
        "execute",
        sql=f"UPDATE {items} SET price = price * 2 WHERE id >= %s RETURNING id, price",
        params=[4],
    )
    assert result.output.splitlines()[0] == "UPDATE 2: 2 rows affected; committed."
    assert result.output.splitlines()[-1] == "(2 rows)"
    assert result.data == {
        "command": "UPDATE 2",
        "rows_affected": 2,
        "committed": True,
        "dry_run": False,
        "columns": ["id", "price"],
        "rows": [[4, "10.00"], [5, "12.50"]],
        "row_count": 2,
        "truncated": False,
    }
    assert admin_query(schema, f"SELECT id FROM {items} WHERE price >= 10 ORDER BY id") == [
        (4,),
        (5,),
    ]
    created = await run_action(connector, "execute", sql=f"CREATE INDEX ON {items} (name)")
    assert created.output == "CREATE INDEX; committed."


async def test_execute_dry_run_rolls_back_and_reports_what_it_would_do(
    tmp_path: Path, schema: str, items: str
) -> None:
    """A dry run really runs the write, reports its count and RETURNING rows, then undoes it."""
    connector = await started(tmp_path, schema)
    result = await run_action(
        connector, "execute", dry_run=True, sql=f"DELETE FROM {items} WHERE id <= 3 RETURNING name"
    )
    assert (
        result.output.splitlines()[0]
        == "dry run: DELETE would affect 3 rows; rolled back, nothing changed."
    )
    data = data_of(result)
    assert (data["rows_affected"], data["committed"]) == (3, False)
    assert data["rows"] == [["item 1"], ["item 2"], ["item 3"]]
    dropped = await run_action(connector, "execute", dry_run=True, sql=f"DROP TABLE {items}")
    assert dropped.output == "dry run: DROP TABLE ran; rolled back, nothing changed."
    assert admin_query(schema, f"SELECT count(*) FROM {items}") == [(5,)]


async def test_execute_refuses_to_end_its_own_transaction(tmp_path: Path, schema: str) -> None:
    """A COMMIT or ROLLBACK sent as the statement is refused: each call is one transaction."""
    connector = await started(tmp_path, schema)
    with pytest.raises(ActionFailed, match="ended LAM's transaction"):
        await run_action(connector, "execute", sql="COMMIT", dry_run=True)


async def test_constraint_errors_say_nothing_changed(
    tmp_path: Path, schema: str, items: str
) -> None:
    """A failed write reports PostgreSQL's message and detail, and that it was rolled back."""
    connector = await started(tmp_path, schema)
    with pytest.raises(ActionFailed) as caught:
        await run_action(
            connector, "execute", sql=f"INSERT INTO {items} VALUES (%s, 'dup', 1)", params=[1]
        )
    assert str(caught.value).startswith(
        "pg.execute failed (SQLSTATE 23505); the transaction was rolled back, nothing changed."
    )
    assert "Key (id)=(1) already exists" in str(caught.value)


# Start-up, reachability and secrets


async def test_an_unreachable_server_fails_its_instance_alone(tmp_path: Path) -> None:
    """A postgres instance whose server refuses connections is reported; others still start."""
    port = free_port()
    catalog = await start_connectors(
        [
            ConnectorConfig(
                type="postgres",
                name="pgdown",
                settings={"host": "127.0.0.1", "port": port, "dbname": "test", "user": "postgres"},
            ),
            ConnectorConfig(type="test", name="test"),
        ],
        {"postgres": PostgresConnector, "test": ScriptedConnector},
    )
    assert "test.noop" in catalog and "pgdown.query" not in catalog
    reason = catalog.failures["pgdown"]
    assert reason.startswith(
        f"connector 'pgdown': cannot connect to PostgreSQL at 127.0.0.1:{port}"
    )
    assert "Connection refused" in reason


@pytest.mark.parametrize("kept_in", ["password", "dsn"])
async def test_the_password_never_appears_in_results_errors_or_logs(
    kept_in: str, tmp_path: Path, schema: str, items: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A password, in a password file or inside a dsn file, stays out of results, errors, logs."""
    password_file = tmp_path / "password"
    password_file.write_text(CANARY + "\n", encoding="utf-8")
    parts = conninfo_to_dict(DSN)

    def settings(**override: Any) -> PostgresSettings:
        if kept_in == "dsn":
            dsn = make_conninfo(DSN, password=CANARY, **override)
            return PostgresSettings.model_validate(
                {"dsn": dsn_file(tmp_path, dsn), "search_path": [schema]}
            )
        fields = {key: parts[key] for key in ("host", "port", "dbname", "user") if key in parts}
        return PostgresSettings.model_validate(
            {**fields, **override, "password": f"file:{password_file}", "search_path": [schema]}
        )

    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with structlog.testing.capture_logs() as logs:
        connector = PostgresConnector("pg", settings())
        seen += [repr(connector.settings), str(connector.settings)]
        await connector.start(lambda: None)
        result = await run_action(
            connector,
            "query",
            sql=f"SELECT current_setting('application_name') AS app, count(*) FROM {items}",
        )
        seen += [result.output, json.dumps(result.data)]
        dry = await run_action(
            connector, "execute", dry_run=True, sql=f"UPDATE {items} SET name = name"
        )
        seen += [dry.output, json.dumps(dry.data)]
        for bad in ("SELEC 1", "SELECT pg_sleep(5)", f"INSERT INTO {items} VALUES (7, 'x', 1)"):
            with pytest.raises(ActionFailed) as caught:
                await run_action(connector, "query", sql=bad, budget=1.0)
            seen.append(str(caught.value))
        down = PostgresConnector("pgdown", settings(port=free_port()))
        with pytest.raises(RetryableError, match="cannot connect to PostgreSQL") as refused:
            await down.start(lambda: None)
        seen.append(str(refused.value))
    seen += [json.dumps(logs, default=str), caplog.text]
    assert data_of(result)["rows"] == [["lam/pg", 5]]
    assert len(seen) == 12
    for text in seen:
        assert CANARY not in text


# End to end through the engine


@pytest.fixture
async def connector(tmp_path: Path, schema: str) -> AsyncIterator[PostgresConnector]:
    """The engine's connector in this module: a started postgres connector named pg."""
    started_connector = await started(tmp_path, schema)
    yield started_connector
    await started_connector.aclose()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    database = database_name()
    return write_policy(
        tmp_path / "policies",
        f"""\
g, user:alice, role:analyst, *
p, role:analyst, staging, pg.query, {database}, run, allow
p, role:analyst, staging, pg.execute, {database}, request, allow
g, user:bob, role:dba, *
p, role:dba, staging, pg.*, {database}, approve, allow
""",
    )


async def test_engine_runs_queries_and_holds_writes_for_approval(
    make_engine: EngineFactory, schema: str, items: str
) -> None:
    """Through the engine, a query runs at once and an execute waits for a DBA's approval."""
    engine: Engine = make_engine()

    def ask(text: str) -> Request:
        return Request(text=text, requester="user:alice", environment="staging")

    read = await engine.ask(ask(f'run pg.query sql="SELECT count(*) AS n FROM {items}"'))
    assert read.state == "succeeded"
    assert read.plan is not None and read.plan.steps[0].resource == database_name()
    assert read.results[0].data == {
        "columns": ["n"],
        "rows": [[5]],
        "row_count": 1,
        "truncated": False,
    }

    write = await engine.ask(ask(f'run pg.execute sql="DELETE FROM {items} WHERE id > 3"'))
    assert write.state == "awaiting_approval"
    assert write.decisions[0].decision == "needs_approval"
    assert admin_query(schema, f"SELECT count(*) FROM {items}") == [(5,)]

    approved = await engine.approve(write.id, "user:bob")
    assert approved.state == "succeeded"
    assert approved.results[0].output == "DELETE 2: 2 rows affected; committed."
    assert admin_query(schema, f"SELECT count(*) FROM {items}") == [(3,)]
