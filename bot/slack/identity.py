"""Who is asking: the policy subject of a Slack payload's user, and their Slack user groups.

The subject is ``user:{team_id}/{user_id}``, taken from the payload's user fields, which
Slack fills in and signs. Nothing else counts: not a display name, not a name in the
text, not a value echoed back in a button. User groups become ``group:HANDLE`` subjects.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

log = structlog.get_logger("lam.slack")

SLACK_ID = re.compile(r"^[A-Z][A-Z0-9]{1,31}$")
"""Slack team, user, channel and group ids: an upper-case letter, then letters and digits."""


@dataclass(frozen=True)
class Identity:
    """A person as Slack vouches for them in one payload."""

    team_id: str
    user_id: str

    @property
    def subject(self) -> str:
        return subject_for(self.team_id, self.user_id)


def subject_for(team_id: str, user_id: str) -> str:
    return f"user:{team_id}/{user_id}"


def slack_user(subject: str) -> str | None:
    """The Slack user id in a ``user:TEAM/USER`` subject; ``None`` for any other subject."""
    team, sep, user = subject.removeprefix("user:").partition("/")
    if not subject.startswith("user:") or not sep or not SLACK_ID.match(user):
        return None
    return user if SLACK_ID.match(team) else None


def identify(body: Mapping[str, Any]) -> Identity | None:
    """The person behind an event, command or interaction; ``None`` when it names nobody.

    Events carry the user in ``event.user`` and their team in ``event.user_team`` (Slack
    Connect) or ``event.team``; commands in ``user_id`` and ``team_id``; interactions in
    ``user.id`` and ``user.team_id``. Each falls back to the workspace of the payload.
    """
    event = body.get("event")
    if isinstance(event, Mapping):
        user = event.get("user")
        team = event.get("user_team") or event.get("team") or body.get("team_id")
    elif isinstance(body.get("user"), Mapping):
        user = body["user"].get("id")
        payload_team = body.get("team")
        team = body["user"].get("team_id") or (
            payload_team.get("id") if isinstance(payload_team, Mapping) else payload_team
        )
    else:
        user, team = body.get("user_id"), body.get("team_id")
    if not isinstance(user, str) or not isinstance(team, str):
        return None
    if SLACK_ID.match(user) and SLACK_ID.match(team):
        return Identity(team, user)
    return None


@dataclass(frozen=True)
class UserGroup:
    id: str
    handle: str
    members: frozenset[str]

    @property
    def subject(self) -> str:
        return f"group:{self.handle}"


class Directory:
    """The workspace's user groups and their members, cached for ``refresh`` seconds.

    One ``usergroups.list`` call (with members) fills the cache; concurrent readers
    share one refresh. When Slack cannot be reached the last good answer is kept, so an
    outage never changes who is in which group.
    """

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        refresh: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._refresh = refresh
        self._clock = clock
        self._groups: dict[str, UserGroup] = {}
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def groups_of(self, user_id: str) -> tuple[str, ...]:
        """The ``group:HANDLE`` subjects of the groups ``user_id`` belongs to, sorted."""
        groups = await self._current()
        return tuple(sorted(g.subject for g in groups.values() if user_id in g.members))

    async def group(self, handle: str) -> UserGroup | None:
        return (await self._current()).get(handle)

    def invalidate(self) -> None:
        """Refresh on the next read (a ``subteam_members_changed`` event arrived)."""
        self._loaded_at = None

    async def _current(self) -> dict[str, UserGroup]:
        if self._fresh():
            return self._groups
        async with self._lock:
            if not self._fresh():
                await self._load()
        return self._groups

    def _fresh(self) -> bool:
        return self._loaded_at is not None and self._clock() - self._loaded_at < self._refresh

    async def _load(self) -> None:
        try:
            answer = await self._client.usergroups_list(include_users=True)
        except SlackApiError as error:
            log.warning("slack.usergroups_unavailable", error=str(error.response.get("error")))
            if self._loaded_at is not None:
                # Keep the last good answer, and try again after another refresh period.
                self._loaded_at = self._clock()
            return
        groups: dict[str, UserGroup] = {}
        for item in answer.get("usergroups") or []:
            if not isinstance(item, Mapping) or item.get("date_delete"):
                continue
            handle, group_id = item.get("handle"), item.get("id")
            if isinstance(handle, str) and isinstance(group_id, str):
                users = item.get("users") or []
                members = frozenset(u for u in users if isinstance(u, str))
                groups[handle] = UserGroup(group_id, handle, members)
        self._groups = groups
        self._loaded_at = self._clock()
