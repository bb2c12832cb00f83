"""Slack's side of requests, kept in the store so that every replica sees the same.

The store is the source of truth for requests and the audit trail; these keys only hold
Slack's side of them (``Store.remember`` and ``Store.claim``):

- ``slack:plan:{request_id}``: where the request's plan message is;
- ``slack:thread:{team}:{channel}:{thread_ts}``: the latest request asked in a LAM thread,
  so that a reply there is recognised by whichever replica receives it;
- ``slack:posted:{request_id}:{follow-up}``: claimed by the one post of that follow-up
  (``notified``, ``results``, ``asked{n}``), so that it goes out once across replicas
  and restarts;
- ``slack:audit:{channel}``: the seq of the last audit event the channel got;
- ``slack:progress``: the seq of the last audit event progress has rendered.

A plan message never moves once posted, so each replica caches where it is; nothing else
is cached, as another replica may change it at any time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from datetime import timedelta
from pathlib import Path
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.store import Store

log = structlog.get_logger("lam.slack")

KEPT = timedelta(days=30)
"""How long plan locations, LAM threads and posted marks are kept."""
CACHED_PLANS = 10_000

Posted = Literal["notified", "results"]
"""Follow-ups an older LAM marked as posted in its state file."""


class PlanMessage(BaseModel):
    """Where a request's plan message is, and the thread it belongs to."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    channel: str
    ts: str
    thread_ts: str | None = None


class SlackState:
    """The Slack front's keys in the store, for the workspace ``team_id``."""

    def __init__(self, store: Store, team_id: str) -> None:
        self._store = store
        self._team = team_id
        self._plans: OrderedDict[str, PlanMessage] = OrderedDict()

    async def plan_of(self, request_id: str) -> PlanMessage | None:
        """Where ``request_id``'s plan message is; ``None`` for a request asked elsewhere."""
        if (cached := self._plans.get(request_id)) is not None:
            self._plans.move_to_end(request_id)
            return cached
        text = await self._store.recall(f"slack:plan:{request_id}")
        if text is None:
            return None
        try:
            plan = PlanMessage.model_validate_json(text)
        except ValidationError as error:
            log.warning("slack.plan_unreadable", request_id=request_id, error=str(error))
            return None
        self._cache(request_id, plan)
        return plan

    async def remember_plan(self, request_id: str, plan: PlanMessage) -> None:
        await self._store.remember(f"slack:plan:{request_id}", plan.model_dump_json(), KEPT)
        self._cache(request_id, plan)

    def _cache(self, request_id: str, plan: PlanMessage) -> None:
        self._plans[request_id] = plan
        self._plans.move_to_end(request_id)
        while len(self._plans) > CACHED_PLANS:
            self._plans.popitem(last=False)

    async def request_in_thread(self, channel: str, thread_ts: str) -> str | None:
        """The latest request asked in this thread, if it is a LAM thread."""
        return await self._store.recall(self._thread_key(channel, thread_ts))

    async def remember_thread(self, channel: str, thread_ts: str, request_id: str) -> None:
        await self._store.remember(self._thread_key(channel, thread_ts), request_id, KEPT)

    def _thread_key(self, channel: str, thread_ts: str) -> str:
        return f"slack:thread:{self._team}:{channel}:{thread_ts}"

    async def first_to_post(self, request_id: str, what: str) -> bool:
        """Whether this is the one post of ``what`` for ``request_id``; later ones are not.

        Each call claims with a name of its own, so even the same replica gets ``False``
        the second time.
        """
        mine = uuid.uuid4().hex
        return await self._store.claim(f"slack:posted:{request_id}:{what}", mine, KEPT) == mine

    async def audit_position(self, channel: str) -> int:
        """The seq of the last audit event posted to ``channel``; 0 before the first."""
        return _seq(await self._store.recall(f"slack:audit:{channel}")) or 0

    async def set_audit_position(self, channel: str, seq: int) -> None:
        await self._store.remember(f"slack:audit:{channel}", str(seq))

    async def progress_position(self) -> int | None:
        """The seq of the last audit event progress has rendered; ``None`` at first."""
        return _seq(await self._store.recall("slack:progress"))

    async def set_progress_position(self, seq: int) -> None:
        await self._store.remember("slack:progress", str(seq))


def _seq(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


class _LegacyPlan(PlanMessage):
    posted: tuple[Posted, ...] = ()


class _Legacy(BaseModel):
    model_config = ConfigDict(extra="ignore")

    audit_seq: int = 0
    plans: dict[str, _LegacyPlan] = Field(default_factory=dict)


async def migrate(path: Path, state: SlackState, audit_channel: str | None) -> None:
    """Move what an older LAM kept in ``slack-state.json`` into the store, once.

    The audit channel's position (so that the channel is not sent the whole trail again),
    the plan messages and their threads, and what was posted for them; then the file is
    renamed ``*.migrated``. What the store has already is kept.
    """
    legacy = await asyncio.to_thread(_read_legacy, path)
    if legacy is None:
        return
    if (
        audit_channel is not None
        and legacy.audit_seq
        and await state.audit_position(audit_channel) == 0
    ):
        await state.set_audit_position(audit_channel, legacy.audit_seq)
    for request_id, plan in legacy.plans.items():
        if await state.plan_of(request_id) is None:
            await state.remember_plan(request_id, PlanMessage(**plan.model_dump()))
            await state.remember_thread(plan.channel, plan.thread_ts or plan.ts, request_id)
            for done in plan.posted:
                await state.first_to_post(request_id, done)
    await asyncio.to_thread(path.rename, path.with_name(path.name + ".migrated"))
    log.info("slack.legacy_state_migrated", path=str(path), plans=len(legacy.plans))


def _read_legacy(path: Path) -> _Legacy | None:
    if not path.exists():
        return None
    try:
        return _Legacy.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as error:
        log.warning("slack.legacy_state_unreadable", path=str(path), error=str(error))
        return None
