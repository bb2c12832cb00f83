"""App Home: a person's recent requests and the approvals waiting for them."""

from __future__ import annotations

import structlog

from bot import approvals
from bot.errors import LamError
from bot.models import RequestRecord, utcnow
from bot.slack.blocks import (
    Block,
    clip,
    code,
    context,
    decision_buttons,
    escape,
    header,
    history_rows,
    section,
    who,
)
from bot.slack.front import SLACK_FAILURES, SlackFront
from bot.slack.identity import Identity

log = structlog.get_logger("lam.slack")

RECENT = 10
WAITING = 15
SCAN = 200
"""Requests awaiting approval looked at to find those a person may decide."""


async def awaiting_decision_by(
    front: SlackFront, subject: str, limit: int, groups: tuple[str, ...] = ()
) -> list[RequestRecord]:
    """Requests awaiting approval that ``subject`` may approve now, most recent first.

    Each is put through the approvals step without saving, so the list agrees with what a
    click would do: not the person's own, not already decided by them, not expired.
    """
    waiting = await front.engine.store.history(states=frozenset({"awaiting_approval"}), limit=SCAN)
    found: list[RequestRecord] = []
    now = utcnow()
    for record in waiting:
        try:
            policy = front.engine.policy
            approvals.decide(
                record, subject, policy, approve=True, reason=None, now=now, groups=groups
            )
        except LamError:
            continue
        found.append(record)
        if len(found) >= limit:
            break
    return found


def home_view(recent: list[RequestRecord], waiting: list[RequestRecord]) -> dict[str, object]:
    blocks: list[Block] = [header("LAM"), context("Ask me in a channel with a mention, or here.")]
    blocks.append(section(f"*Waiting for your approval* ({len(waiting)})"))
    if not waiting:
        blocks.append(context("Nothing is waiting for you."))
    for record in waiting:
        environment = record.intent.environment if record.intent else "?"
        blocks.append(
            section(
                f"{code(record.id)} from {who(record.request.requester)} in"
                f" *{escape(environment)}*: “{escape(clip(record.request.text, 200))}”"
            )
        )
        blocks.append({**decision_buttons(record.id), "block_id": f"lam_home_{record.id}"})
    blocks.append({"type": "divider"})
    blocks.append(section("*Your recent requests*"))
    rows = history_rows(recent)
    blocks.append(section("\n".join(rows)) if rows else context("You have not asked yet."))
    return {"type": "home", "blocks": blocks[:100]}


async def publish_home(front: SlackFront, identity: Identity) -> None:
    """Publish the person's Home tab as it stands now."""
    try:
        recent = await front.engine.history(requester=identity.subject, limit=RECENT)
        groups = await front.groups_of(identity)
        waiting = await awaiting_decision_by(front, identity.subject, WAITING, groups)
    except LamError as error:
        log.warning("slack.home_unavailable", error=str(error))
        return
    try:
        await front.client.views_publish(user_id=identity.user_id, view=home_view(recent, waiting))
    except SLACK_FAILURES as error:
        log.warning("slack.home_publish_failed", user=identity.user_id, error=str(error))
