"""The ``postgres`` connector: SQL on one PostgreSQL database, reads kept apart from writes.

Each instance offers two actions:

- ``NAME.query`` (risk ``read``) runs one statement in a ``READ ONLY`` transaction that is
  rolled back afterwards, so a write sent through it fails ("cannot execute INSERT in a
  read-only transaction"). It returns at most ``row_cap`` rows, as an aligned text table
  and as data ``{"columns", "rows", "row_count", "truncated"}`` (numerics as strings, so no
  digit is lost; times in ISO 8601; bytes as ``\\x`` hex). Rows are streamed, so a huge
  result is never held in memory: LAM stops reading after ``row_cap + 1`` and the server
  cancels the rest. Columns are known only when a row came back. A dry run shows the
  query's plan (``EXPLAIN``) without running it.
- ``NAME.execute`` (risk ``write``; absent when ``allow_execute`` is false) runs one
  statement in a transaction and commits it. Its data adds ``command`` (the server's tag,
  e.g. ``UPDATE 3``), ``rows_affected``, ``committed`` and ``dry_run`` to the keys above,
  which hold any ``RETURNING`` rows (up to ``row_cap``; libpq holds the whole ``RETURNING``
  result while the statement runs). A dry run runs the statement in a transaction that is
  rolled back and reports what it would affect. Only transactional effects are undone:
  sequences still advance, and functions that act outside the database still act.

Both run exactly one statement per call. Statements are sent with the extended query
protocol, which the server refuses for several statements at once, so ``SELECT 1; DROP
TABLE t`` is refused as a whole and never runs in part; and no ``COMMIT`` in a script can
end the read-only or dry-run transaction early. Every statement runs under ``SET LOCAL
statement_timeout`` (the setting, or less when the executor's budget is shorter); if the
step is cancelled (executor timeout, shutdown), psycopg cancels the statement on the
server and the connection is closed.

The policy resource of both actions is the database, as the server names it: each action
has a ``database`` argument whose default, and only allowed value, is that name, so a rule
such as ``p, role:analyst, prod, *.query, orders, run, allow`` covers every connector that
reaches the ``orders`` database. SQL text is not parsed for tables: a parser that guessed
wrong would be a way around policy. Finer limits belong to the database role LAM connects
as (grant it only what you mean); ``READ ONLY`` stops writes to tables, not functions with
effects of their own (``pg_terminate_backend``, ``dblink``).

Each call opens its own connection and closes it (``psycopg_pool`` is not a dependency,
and needs none): session state a statement leaves behind (``SET``, temporary tables,
advisory locks) cannot reach the next call, calls run side by side without waiting on a
lock, and a cancelled or broken connection is simply dropped. The cost, one connect per
call, is milliseconds on a local network. Named prepared statements are used to force
the extended protocol; behind PgBouncer in transaction mode that needs PgBouncer 1.21+.

In lam.yaml::

    connectors:
      - type: postgres
        name: orders_db
        settings:
          dsn: env:ORDERS_DATABASE_URL   # or: host, port, dbname, user, password: file:/run/pg
          statement_timeout: 10          # seconds
          connect_timeout: 5             # seconds
          row_cap: 1000
          search_path: [app, public]
          allow_execute: false           # only orders_db.query
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Annotated, Any, ClassVar, TypeVar

import psycopg
import structlog
from psycopg import errors, sql
from psycopg.pq import TransactionStatus
from pydantic import AfterValidator, BaseModel, Field, JsonValue, create_model

from bot.audit import Redactor
from bot.errors import ActionFailed, RetryableError
from connectors._postgres_results import count, rows_result
from connectors._postgres_settings import PostgresSettings
from connectors.base import Action, ActionContext, ActionResult, Params
from connectors.secrets import secret_values

__all__ = ["ExecuteParams", "PostgresConnector", "PostgresSettings", "QueryParams"]

log = structlog.get_logger("lam.postgres")

KILL_GRACE = 0.5
"""Seconds kept from the executor's budget so the server's own timeout fires first, and
the failure names the statement rather than the executor's deadline."""
ACTION_MARGIN = 5.0
"""Seconds an action may take beyond connecting and its statement: begin, fetch, close."""
MULTIPLE_STATEMENTS = "cannot insert multiple commands into a prepared statement"
NO_ROWS_RESULT = "didn't produce a result"

Value = str | int | float | bool | None
Connection = psycopg.AsyncConnection[tuple[Any, ...]]
Cursor = psycopg.AsyncCursor[tuple[Any, ...]]


def _statement_text(sql_text: str) -> str:
    if not sql_text.strip():
        raise ValueError("is blank; give one SQL statement")
    if "\0" in sql_text:
        raise ValueError("holds a NUL character, which PostgreSQL cannot take")
    return sql_text


Statement = Annotated[str, AfterValidator(_statement_text)]


class QueryParams(Params):
    sql: Statement = Field(
        max_length=100_000,
        description="One read-only SQL statement (SELECT, WITH, VALUES, SHOW, EXPLAIN)."
        " With params, %s marks each value and a literal % is written %%.",
    )
    params: tuple[Value, ...] = Field(
        default=(), description="Values for the %s placeholders in sql, in order."
    )


class ExecuteParams(Params):
    sql: Statement = Field(
        max_length=100_000,
        description="One SQL statement that changes data or schema (INSERT, UPDATE,"
        " DELETE, ALTER, ...), optionally with RETURNING. With params, %s marks each value"
        " and a literal % is written %%.",
    )
    params: tuple[Value, ...] = Field(
        default=(), description="Values for the %s placeholders in sql, in order."
    )


ParamsT = TypeVar("ParamsT", bound=Params)


def _on_database(base: type[ParamsT], database: str) -> type[ParamsT]:
    """``base`` with a ``database`` argument fixed to ``database``: the policy resource."""

    def only_this_database(value: str) -> str:
        if value != database:
            raise ValueError(
                f"this connector reaches database {database!r} only; leave database out"
            )
        return value

    field = Field(
        default=database,
        description="The database the statement runs on; only this one.",
        json_schema_extra={"enum": [database]},
    )
    return create_model(
        base.__name__,
        __base__=base,
        database=(Annotated[str, AfterValidator(only_this_database)], field),
    )


class PostgresConnector:
    """Runs SQL on one database: ``NAME.query`` read-only, ``NAME.execute`` for changes."""

    type_name: ClassVar[str] = "postgres"
    Settings: ClassVar[type[BaseModel]] = PostgresSettings

    def __init__(self, name: str, settings: PostgresSettings) -> None:
        self.name = name
        self.settings = settings
        self._conninfo = settings.conninfo(application_name=f"lam/{name}")
        self._target = settings.target()
        # secret_values includes the password inside a dsn (PostgresSettings.secret_parts).
        self._redactor = Redactor(secret_values(settings))
        self._actions: tuple[Action, ...] = ()

    async def start(self, changed: Callable[[], None]) -> None:
        """Check that the server answers, and learn the database's name for policy."""
        connection = await self._connect()
        try:
            cursor = await connection.execute("SELECT current_database()")
            row = await cursor.fetchone()
        except psycopg.Error as error:
            raise ActionFailed(
                f"PostgreSQL at {self._target} did not answer 'SELECT current_database()':"
                f" {self._text(error)}"
            ) from None
        finally:
            await connection.close()
        assert row is not None
        database = str(row[0])
        self._actions = self._declare(database)
        log.info("postgres.started", connector=self.name, target=self._target, database=database)

    def actions(self) -> Sequence[Action]:
        return self._actions

    async def aclose(self) -> None:
        """Nothing to release: every call closes its own connection."""

    def _declare(self, database: str) -> tuple[Action, ...]:
        name, on = self.name, f"on PostgreSQL database {database!r}"
        timeout = self.settings.connect_timeout + self.settings.statement_timeout + ACTION_MARGIN
        query = Action(
            id=f"{name}.query",
            description=f"Run one read-only SQL statement {on}, in a READ ONLY transaction;"
            f" returns at most {self.settings.row_cap} rows as a table, and as data with"
            " columns, rows, row_count and truncated.",
            params=_on_database(QueryParams, database),
            run=self._query,
            risk="read",
            examples=(f"query {name} {{sql}}", f"{name} query {{sql}}"),
            resource_param="database",
            supports_dry_run=True,
            idempotent=True,
            timeout=timeout,
        )
        if not self.settings.allow_execute:
            return (query,)
        execute = Action(
            id=f"{name}.execute",
            description=f"Run one SQL statement that changes data or schema {on}, in a"
            " transaction that is committed; reports the rows affected and RETURNING rows."
            " A dry run rolls it back and reports what it would affect.",
            params=_on_database(ExecuteParams, database),
            run=self._execute,
            risk="write",
            examples=(f"execute on {name} {{sql}}", f"{name} execute {{sql}}"),
            resource_param="database",
            supports_dry_run=True,
            timeout=timeout,
        )
        return (query, execute)

    async def _query(self, params: BaseModel, ctx: ActionContext) -> ActionResult:
        assert isinstance(params, QueryParams)
        action_id = f"{self.name}.query"
        values = params.params or None
        async with self._transaction(action_id, ctx, read_only=True) as cursor:
            if ctx.dry_run:
                await cursor.execute("EXPLAIN " + params.sql, values, prepare=True)
                plan = [str(row[0]) for row in await cursor.fetchall()]
                return ActionResult(
                    output="dry run: the query was planned, not run:\n" + "\n".join(plan),
                    data={"dry_run": True, "plan": list[JsonValue](plan)},
                )
            columns: list[str] = []
            rows: list[tuple[Any, ...]] = []
            try:
                # aclosing: leaving the loop early must end the stream (psycopg then
                # cancels the rest on the server) before the connection is used again.
                stream = cursor.stream(params.sql, values)
                assert isinstance(stream, AsyncGenerator)  # typed as an iterator; is one
                async with contextlib.aclosing(stream) as streamed:
                    async for row in streamed:
                        if not rows:
                            columns = [column.name for column in cursor.description or ()]
                        rows.append(row)
                        if len(rows) > self.settings.row_cap:
                            break
            except psycopg.ProgrammingError as error:
                if NO_ROWS_RESULT not in str(error):
                    raise
                raise ActionFailed(
                    f"{action_id} runs statements that return rows, and this one returns"
                    f" none; nothing was changed.{self._execute_hint()}"
                ) from None
            await cursor.execute("ROLLBACK")
        return self._result("", columns, rows, extra={})

    async def _execute(self, params: BaseModel, ctx: ActionContext) -> ActionResult:
        assert isinstance(params, ExecuteParams)
        action_id = f"{self.name}.execute"
        async with self._transaction(action_id, ctx, read_only=False) as cursor:
            await cursor.execute(params.sql, params.params or None, prepare=True)
            command = cursor.statusmessage or "done"
            affected = cursor.rowcount if cursor.rowcount >= 0 else None
            columns = [column.name for column in cursor.description or ()]
            rows = await cursor.fetchmany(self.settings.row_cap + 1) if columns else []
            if cursor.connection.info.transaction_status != TransactionStatus.INTRANS:
                raise ActionFailed(
                    f"{action_id} ran {command!r}, which ended LAM's transaction: each call is"
                    " one transaction of its own, so send no BEGIN, COMMIT or ROLLBACK"
                )
            if ctx.dry_run:
                await cursor.execute("ROLLBACK")
            else:
                await self._commit(action_id, cursor)
        if not ctx.dry_run:
            how_many = f": {count(affected)} affected" if affected is not None else ""
            summary = f"{command}{how_many}; committed."
        else:
            verb = " ".join(word for word in command.split() if not word.isdigit())
            would = f"would affect {count(affected)}" if affected is not None else "ran"
            summary = f"dry run: {verb} {would}; rolled back, nothing changed."
        extra: dict[str, JsonValue] = {
            "command": command,
            "rows_affected": affected,
            "committed": not ctx.dry_run,
            "dry_run": ctx.dry_run,
        }
        return self._result(summary, columns, rows, extra=extra)

    async def _commit(self, action_id: str, cursor: Cursor) -> None:
        try:
            await cursor.execute("COMMIT")
        except psycopg.OperationalError as error:
            if error.sqlstate is not None and not error.sqlstate.startswith(("08", "57P")):
                raise
            raise ActionFailed(
                f"{action_id} lost the connection to PostgreSQL while committing"
                f" ({self._text(error)}); whether the change was committed is unknown:"
                " check before running it again"
            ) from None

    @contextlib.asynccontextmanager
    async def _transaction(
        self, action_id: str, ctx: ActionContext, *, read_only: bool
    ) -> AsyncIterator[Cursor]:
        """One connection and one transaction with the statement timeout and search path.

        A psycopg error raised inside becomes an ``ActionFailed`` that names the action.
        The connection is closed however the block ends, cancellation included; closing
        ends a transaction still open, which the server rolls back.
        """
        timeout = min(
            self.settings.statement_timeout, ctx.timeout - min(KILL_GRACE, ctx.timeout / 10)
        )
        connection = await self._connect()
        try:
            cursor = connection.cursor()
            try:
                await cursor.execute("BEGIN READ ONLY" if read_only else "BEGIN")
                await cursor.execute(
                    "SELECT set_config('statement_timeout', %s, true)",
                    [f"{max(1, round(timeout * 1000))}ms"],
                )
                if self.settings.search_path:
                    schemas = sql.SQL(", ").join(map(sql.Identifier, self.settings.search_path))
                    await cursor.execute(sql.SQL("SET LOCAL search_path TO {}").format(schemas))
                yield cursor
            except psycopg.Error as error:
                raise self._failure(action_id, error, timeout, writes=not read_only) from None
        finally:
            await connection.close()

    async def _connect(self) -> Connection:
        try:
            return await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        except psycopg.Error as error:
            raise RetryableError(
                f"cannot connect to PostgreSQL at {self._target}: {self._text(error)}"
            ) from None

    def _failure(
        self, action_id: str, error: psycopg.Error, timeout: float, *, writes: bool
    ) -> ActionFailed:
        """What went wrong, for the person who asked; never a secret, never a traceback."""
        said = self._text(error)
        undone = "; the transaction was rolled back, nothing changed" if writes else ""
        if isinstance(error, errors.QueryCanceled) and "statement timeout" in said:
            return ActionFailed(
                f"{action_id}: the statement timed out after {timeout:.3g} s and was"
                f" cancelled{undone}"
            )
        if isinstance(error, errors.ReadOnlySqlTransaction):
            return ActionFailed(
                f"{action_id} runs read-only and refused a write: {said}.{self._execute_hint()}"
            )
        if MULTIPLE_STATEMENTS in said:
            return ActionFailed(
                f"{action_id} runs one SQL statement per call, and this sql holds several;"
                " nothing was run. Give each statement its own step."
            )
        if isinstance(error, errors.TransactionRollback):
            return RetryableError(f"{action_id}: PostgreSQL rolled the transaction back: {said}")
        if isinstance(error, psycopg.OperationalError) and (
            error.sqlstate is None or error.sqlstate.startswith(("08", "57P"))
        ):
            return RetryableError(
                f"{action_id} lost the connection to PostgreSQL at {self._target}: {said};"
                " the transaction was not committed"
            )
        if error.sqlstate is None:
            return ActionFailed(f"{action_id} was not run: {said}")
        return ActionFailed(
            f"{action_id} failed (SQLSTATE {error.sqlstate}){undone}. PostgreSQL said: {said}"
        )

    def _execute_hint(self) -> str:
        if self.settings.allow_execute:
            return f" Changes go through {self.name}.execute."
        return f" Connector {self.name!r} makes no changes (allow_execute is false)."

    def _text(self, error: psycopg.Error) -> str:
        """psycopg's message, its libpq hint joined to its line, with secrets masked."""
        text = str(error).strip().removeprefix("connection failed: ")
        return self._redactor.text(text.replace("\n\t", " "))

    def _result(
        self,
        summary: str,
        columns: list[str],
        rows: Sequence[Sequence[Any]],
        *,
        extra: dict[str, JsonValue],
    ) -> ActionResult:
        output, data = rows_result(
            summary,
            columns,
            rows,
            row_cap=self.settings.row_cap,
            limit_bytes=self.settings.output_limit_bytes,
        )
        return ActionResult(output=output, data={**extra, **data})
