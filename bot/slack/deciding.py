"""Approving and rejecting from Slack: the buttons on a plan and the reason modal.

A button's value only names the request; who clicked comes from the payload's user.
The engine authorises the click against policy; whatever it refuses (a non-approver,
the requester, a second click, an expired request, an unknown id) is answered to the
clicker alone, and nothing changes.
"""

from __future__ import annotations

import json
import re

import structlog

from bot import approvals
from bot.approvals import MAX_REASON_CHARS
from bot.errors import InvalidInput, LamError
from bot.lifecycle import DESCRIPTIONS
from bot.models import RequestRecord, utcnow
from bot.slack import home
from bot.slack.blocks import REJECT, Block, clip, code, escape, plain, section
from bot.slack.front import SLACK_FAILURES, SlackFront, Where
from bot.slack.identity import Identity

log = structlog.get_logger("lam.slack")

REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REASON_BLOCK = "reason"
REASON_INPUT = "reason_input"


def request_id_from(value: object) -> str:
    """The request id a button or modal carries; ``InvalidInput`` for anything else."""
    if isinstance(value, str) and REQUEST_ID.match(value):
        return value
    shown = clip(value, 40) if isinstance(value, str) else type(value).__name__
    raise InvalidInput(f"that button does not name a request ({shown!r}); nothing changed")


async def approve(front: SlackFront, identity: Identity, value: object, where: Where) -> None:
    """Approve as the clicker; runs the request when it was the last approval needed."""
    try:
        request_id = request_id_from(value)
        groups = await front.groups_of(identity)
        record = await front.engine.approve(request_id, identity.subject, groups=groups)
    except LamError as error:
        await front.tell(where, f":no_entry: Nothing changed: {escape(str(error))}")
        return
    front.tracker.touch(record.id)
    await front.tell(
        where, f"You approved request {code(record.id)}; it is {DESCRIPTIONS[record.state]}."
    )
    if where.channel is None:
        # The click came from App Home: show it without the request just decided.
        await home.publish_home(front, identity)


async def open_reject(
    front: SlackFront, identity: Identity, value: object, trigger_id: object, where: Where
) -> None:
    """Open the reason modal, once the engine's own rules say this person may reject.

    The check runs the approvals step on the stored request without saving it, so the
    person learns at once (not after typing a reason) that they cannot reject.
    """
    try:
        request_id = request_id_from(value)
        record = await front.engine.show(request_id)
        approvals.decide(
            record,
            identity.subject,
            front.engine.policy,
            approve=False,
            reason="checking whether this person may reject",
            now=utcnow(),
            groups=await front.groups_of(identity),
        )
    except LamError as error:
        await front.tell(where, f":no_entry: Nothing changed: {escape(str(error))}")
        return
    if not isinstance(trigger_id, str) or not trigger_id:
        await front.tell(where, "Slack sent no trigger to open the reason form; try again.")
        return
    try:
        await front.client.views_open(trigger_id=trigger_id, view=reject_modal(record, where))
    except SLACK_FAILURES as error:
        log.warning("slack.modal_failed", request_id=record.id, error=str(error))
        await front.tell(
            where,
            f"I could not open the reason form ({escape(str(error))[:200]}); nothing"
            " changed. Click Reject again.",
        )


def reject_modal(record: RequestRecord, where: Where) -> dict[str, object]:
    """The modal asking why; its metadata names the request and where to answer."""
    metadata = json.dumps(
        {"request": record.id, "channel": where.channel, "thread": where.thread_ts},
        separators=(",", ":"),
    )
    summary = f"Reject request {code(record.id)}: “{escape(clip(record.request.text, 300))}”?"
    blocks: list[Block] = [
        section(summary),
        {
            "type": "input",
            "block_id": REASON_BLOCK,
            "label": plain("Why?", 2000),
            "element": {
                "type": "plain_text_input",
                "action_id": REASON_INPUT,
                "multiline": True,
                "max_length": MAX_REASON_CHARS,
                "placeholder": plain("The requester sees this reason.", 150),
            },
        },
    ]
    return {
        "type": "modal",
        "callback_id": REJECT,
        "title": plain("Reject request", 24),
        "submit": plain("Reject", 24),
        "close": plain("Cancel", 24),
        "private_metadata": metadata,
        "blocks": blocks,
    }


def submitted_reason(view: object) -> str | None:
    """The reason typed in the modal, or ``None`` when the submission carries none."""
    if not isinstance(view, dict):
        return None
    values = view.get("state", {}).get("values", {}) if isinstance(view.get("state"), dict) else {}
    block = values.get(REASON_BLOCK) if isinstance(values, dict) else None
    field = block.get(REASON_INPUT) if isinstance(block, dict) else None
    reason = field.get("value") if isinstance(field, dict) else None
    return reason.strip() if isinstance(reason, str) and reason.strip() else None


def submitted_target(view: object, user_id: str) -> tuple[object, Where]:
    """The request the modal was opened for, and where to answer the person."""
    metadata = view.get("private_metadata") if isinstance(view, dict) else None
    try:
        parsed = json.loads(metadata) if isinstance(metadata, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return None, Where(user_id)
    channel, thread = parsed.get("channel"), parsed.get("thread")
    return parsed.get("request"), Where(
        user_id,
        channel if isinstance(channel, str) else None,
        thread if isinstance(thread, str) else None,
    )


async def reject(
    front: SlackFront, identity: Identity, value: object, reason: str, where: Where
) -> None:
    """Reject as the person who submitted the modal, with their reason."""
    try:
        request_id = request_id_from(value)
        groups = await front.groups_of(identity)
        record = await front.engine.reject(request_id, identity.subject, reason, groups=groups)
    except LamError as error:
        await front.tell(where, f":no_entry: Nothing changed: {escape(str(error))}")
        return
    front.tracker.touch(record.id)
    await front.tell(where, f"You rejected request {code(record.id)}.")
    if where.channel is None:
        await home.publish_home(front, identity)


def reason_problem(reason: str | None) -> str | None:
    """What is wrong with a typed reason, shown under the field; ``None`` when it is fine."""
    if reason is None:
        return "Say why, so the requester knows what to change."
    if len(reason) > MAX_REASON_CHARS:
        return f"Keep it under {MAX_REASON_CHARS} characters."
    return None
