"""The settings of a ``postgres`` connector, and the libpq connection string they make."""

from __future__ import annotations

from typing import Self

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from connectors.secrets import Secret

EXPLICIT_FIELDS = ("host", "port", "dbname", "user", "password")


class PostgresSettings(BaseModel):
    """The ``settings`` of a postgres connector in lam.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dsn: Secret | None = None
    """A whole libpq connection string or ``postgresql://`` URI, as a reference
    (``env:NAME`` or ``file:/path``): it may hold the password. Instead of the fields below."""
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    dbname: str | None = None
    user: str | None = None
    password: Secret | None = None
    connect_timeout: int = Field(default=5, ge=1)
    """Whole seconds to connect (libpq's unit); overrides one in the dsn."""
    statement_timeout: float = Field(default=10.0, gt=0)
    """Seconds one statement may run before the server cancels it."""
    row_cap: PositiveInt = 1000
    """Rows a call returns at most; more are not fetched."""
    output_limit_bytes: int = Field(default=60_000, ge=1024)
    """Bytes the text table, and separately the JSON data, stay under; kept below the
    executor's 64 KiB output cap so whole rows are dropped rather than cut."""
    search_path: tuple[str, ...] | None = None
    """Schemas unqualified names resolve in, set for each call's transaction."""
    allow_execute: bool = True
    """Whether ``NAME.execute`` exists; ``false`` makes the connector read-only."""

    @field_validator("dsn")
    @classmethod
    def _parses(cls, dsn: Secret | None) -> Secret | None:
        if dsn is not None:
            try:
                conninfo_to_dict(dsn.get_secret_value())
            except psycopg.ProgrammingError:
                # libpq's message quotes pieces of the string, and they may be the password.
                raise ValueError(
                    "is not a valid libpq connection string or postgresql:// URI"
                    " (its text is not shown: it may hold a password)"
                ) from None
        return dsn

    @field_validator("search_path")
    @classmethod
    def _schema_names(cls, schemas: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if schemas is not None:
            if not schemas:
                raise ValueError("names no schema; leave search_path out to keep the default")
            for schema in schemas:
                if not schema or "\0" in schema:
                    raise ValueError(f"schema name {schema!r} is empty or holds a NUL")
        return schemas

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> Self:
        given = [name for name in EXPLICIT_FIELDS if getattr(self, name) is not None]
        if self.dsn is not None and given:
            raise ValueError(
                f"give either dsn or {', '.join(given)}, not both: put every connection"
                " parameter in the dsn, or leave the dsn out"
            )
        if self.dsn is None and (self.host is None or self.dbname is None):
            raise ValueError(
                "say where the database is: dsn (env:NAME or file:/path holding a connection"
                " string) or host and dbname (with user, port and password as needed)"
            )
        return self

    def conninfo(self, application_name: str) -> str:
        """The libpq connection string, password included: never log or show it."""
        base = self.dsn.get_secret_value() if self.dsn is not None else ""
        named = conninfo_to_dict(base).get("application_name") if base else None
        return make_conninfo(
            base,
            host=self.host,
            port=self.port,
            dbname=self.dbname,
            user=self.user,
            password=self.password.get_secret_value() if self.password is not None else None,
            connect_timeout=self.connect_timeout,
            application_name=named or application_name,
        )

    def secret_parts(self) -> list[str]:
        """The password inside the dsn: a row or an error can carry it on its own."""
        if self.dsn is None:
            return []
        password = conninfo_to_dict(self.dsn.get_secret_value()).get("password")
        return [str(password)] if password else []

    def target(self) -> str:
        """Where the connector connects, without the password, for messages and logs."""
        params = conninfo_to_dict(self.conninfo("lam"))
        host = params.get("host") or params.get("hostaddr") or "the local socket"
        port = params.get("port") or 5432
        database = params.get("dbname")
        return f"{host}:{port}, " + (
            f"database {database!r}" if database else "the user's default database"
        )
