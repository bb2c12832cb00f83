"""Bolt listeners: the ack side of the front. Each acks and hands the payload over.

Bolt runs with ``process_before_response``: a listener's return is the response, and as
listeners only ack and hand over, Slack gets its answer in well under a millisecond of
LAM's time, with no polling for the ack. What a payload asks for is worked out and done
by ``bot.slack.work``, in this process or in the one the ingress feeds
(``bot.slack.ingress``); so nothing here reads the store or calls Slack.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck

from bot.slack.blocks import APPROVE, PAGE, REJECT
from bot.slack.deciding import REASON_BLOCK, reason_problem, submitted_reason

LAM_ACTIONS = re.compile(rf"^(?:{re.escape(APPROVE)}|{re.escape(REJECT)}|{re.escape(PAGE)}\.\d+)$")
EVENTS = re.compile(
    r"^(?:message|app_mention|app_home_opened|subteam_members_changed|subteam_updated)$"
)

HandOff = Callable[[dict[str, Any]], None]
"""Takes an acknowledged payload's work off the ack path; must not block."""


def register(app: AsyncApp, hand_off: HandOff) -> None:
    """Attach LAM's listeners to ``app``; what they accept goes to ``hand_off``.

    One listener per kind of payload (events, ``/lam``, buttons, the modal): bolt tries
    listeners in order and builds every matcher's arguments anew, so each listener more
    costs every delivery about as much as LAM's whole listener does.
    """

    async def on_event(body: dict[str, Any], event: dict[str, Any]) -> None:
        # Bolt acks events itself. A message event is one of every message in LAM's
        # channels: only DMs and thread replies can be for LAM, and no bot's.
        if event.get("type") == "message" and (
            event.get("subtype")
            or event.get("bot_id")
            or (event.get("channel_type") != "im" and not event.get("thread_ts"))
        ):
            return
        hand_off(body)

    async def acknowledge(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        hand_off(body)

    async def on_reject_submitted(ack: AsyncAck, body: dict[str, Any]) -> None:
        # The reason is checked here, not after: Slack shows the error under the field
        # only in the ack, while the modal is still open.
        if problem := reason_problem(submitted_reason(body.get("view"))):
            await ack(response_action="errors", errors={REASON_BLOCK: problem})
            return
        await ack()
        hand_off(body)

    # Events first: with message.channels, every message in LAM's channels is one.
    app.event(EVENTS)(on_event)
    app.command("/lam")(acknowledge)
    app.action(LAM_ACTIONS)(acknowledge)
    app.view_submission(REJECT)(on_reject_submitted)
