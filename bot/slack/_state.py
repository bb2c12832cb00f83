"""What the Slack front remembers across restarts, in one small JSON file.

The store is the source of truth for requests and the audit trail; this file only holds
Slack's side of them: where each request's plan message is, which threads are LAM's,
what was already posted, and how far the audit poster has got. Losing it loses no
request and no audit event (the poster starts again from the beginning of the trail).
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = structlog.get_logger("lam.slack")

MAX_THREADS = 10_000
"""LAM threads remembered, most recent first: replies in older ones are ignored."""

Posted = Literal["notified", "results"]


class PlanMessage(BaseModel):
    """Where a request's plan message is, and the thread it belongs to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    channel: str
    ts: str
    thread_ts: str | None = None
    posted: tuple[Posted, ...] = ()
    """Follow-ups already posted for it, so a restart never posts them twice."""


class _Saved(BaseModel):
    model_config = ConfigDict(extra="ignore")

    audit_seq: int = 0
    plans: dict[str, PlanMessage] = Field(default_factory=dict)
    threads: list[str] = Field(default_factory=list)


class SlackState:
    """The remembered state, written atomically (temporary file, then rename) on change."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self.audit_seq = 0
        self.plans: dict[str, PlanMessage] = {}
        self._threads: OrderedDict[str, None] = OrderedDict()
        self._lock = asyncio.Lock()
        if path is not None and path.exists():
            self._read(path)

    def _read(self, path: Path) -> None:
        try:
            saved = _Saved.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as error:
            # Starting afresh re-posts audit events; it never loses one.
            log.warning("slack.state_unreadable", path=str(path), error=str(error))
            return
        self.audit_seq = saved.audit_seq
        self.plans = dict(saved.plans)
        self._threads = OrderedDict.fromkeys(saved.threads[-MAX_THREADS:])

    def is_lam_thread(self, channel: str, thread_ts: str) -> bool:
        return f"{channel}/{thread_ts}" in self._threads

    def add_thread(self, channel: str, thread_ts: str) -> None:
        key = f"{channel}/{thread_ts}"
        self._threads[key] = None
        self._threads.move_to_end(key)
        while len(self._threads) > MAX_THREADS:
            self._threads.popitem(last=False)

    def mark(self, request_id: str, done: Posted) -> None:
        plan = self.plans.get(request_id)
        if plan is not None and done not in plan.posted:
            self.plans[request_id] = plan.model_copy(update={"posted": (*plan.posted, done)})

    async def save(self) -> None:
        if self._path is None:
            return
        snapshot = _Saved(
            audit_seq=self.audit_seq, plans=dict(self.plans), threads=list(self._threads)
        ).model_dump_json()
        async with self._lock:
            await asyncio.to_thread(_write_atomically, self._path, snapshot)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
