"""What the local Slack sends an app: events, commands and interactions, signed over HTTP."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from multidict import CIMultiDict, CIMultiDictProxy

from tests.support.slack_model import (
    JSON,
    TEAM_DOMAIN,
    VERIFICATION_TOKEN,
    Delivery,
    Message,
    new_id,
)


class Payloads:
    """The payloads ``SlackSimulator`` builds and delivers; they read its seeded state."""

    # -- payloads Slack sends ----------------------------------------------------------

    def new_trigger_id(self) -> str:
        """A trigger_id ``views.open`` accepts once, within ``TRIGGER_LIFETIME`` seconds."""
        trigger_id = f"{secrets.randbelow(10**11)}.{int(time.time())}.{secrets.token_hex(16)}"
        self._triggers[trigger_id] = time.monotonic()
        return trigger_id

    def new_response_url(self, *, channel: str | None = None, message_ts: str | None = None) -> str:
        """A ``response_url`` on the simulator; ``replace_original`` there edits ``message_ts``."""
        response_id = uuid.uuid4().hex
        self._response_urls[response_id] = (channel, message_ts)
        return f"{self.base_url}/response/{response_id}"

    def event_callback(self, event: Mapping[str, Any], *, event_id: str | None = None) -> JSON:
        """The Events API envelope around ``event``, with a fresh ``event_id`` unless given."""
        return {
            "token": VERIFICATION_TOKEN,
            "team_id": self.team_id,
            "context_team_id": self.team_id,
            "context_enterprise_id": None,
            "api_app_id": self.app_id,
            "event": dict(event),
            "type": "event_callback",
            "event_id": event_id or new_id("Ev"),
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-{secrets.token_urlsafe(24)}",
        }

    def app_mention(
        self,
        text: str,
        *,
        user: str = "U0ALICE",
        channel: str = "C0OPS",
        thread_ts: str | None = None,
    ) -> JSON:
        """An ``app_mention`` event (the bot's mention is prefixed unless present); stored."""
        mention = f"<@{self.bot_user_id}>"
        text = text if mention in text else f"{mention} {text}"
        return self._user_message("app_mention", text, user, channel, thread_ts, None)

    def direct_message(
        self, text: str, *, user: str = "U0ALICE", thread_ts: str | None = None
    ) -> JSON:
        """A ``message`` event in the user's DM with the bot (``channel_type: im``); stored."""
        channel = self.dm_channel(user).id
        return self._user_message("message", text, user, channel, thread_ts, "im")

    def _user_message(
        self,
        kind: str,
        text: str,
        user: str,
        channel: str,
        thread_ts: str | None,
        channel_type: str | None,
    ) -> JSON:
        ts = self._next_ts()
        self._messages[channel][ts] = Message(channel, ts, user, text=text, thread_ts=thread_ts)
        event: JSON = {
            "type": kind,
            "client_msg_id": str(uuid.uuid4()),
            "user": user,
            "text": text,
            "ts": ts,
            "team": self.team_id,
            "channel": channel,
            "event_ts": ts,
        }
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        if channel_type is not None:
            event["channel_type"] = channel_type
        return event

    def command_payload(
        self,
        command: str = "/lam",
        text: str = "",
        *,
        user: str = "U0ALICE",
        channel: str = "C0OPS",
    ) -> dict[str, str]:
        """The fields of a slash command invocation, as Slack form-encodes them."""
        return {
            "token": VERIFICATION_TOKEN,
            "team_id": self.team_id,
            "team_domain": TEAM_DOMAIN,
            "channel_id": channel,
            "channel_name": self._channel_name(channel),
            "user_id": user,
            "user_name": self.users[user].name if user in self.users else user.lower(),
            "command": command,
            "text": text,
            "api_app_id": self.app_id,
            "is_enterprise_install": "false",
            "response_url": self.new_response_url(channel=channel),
            "trigger_id": self.new_trigger_id(),
        }

    def block_actions_payload(
        self,
        action_id: str,
        value: str,
        *,
        user: str = "U0ALICE",
        channel: str = "C0OPS",
        message_ts: str | None = None,
        block_id: str = "lam_actions",
    ) -> JSON:
        """A ``block_actions`` payload: ``user`` clicked button ``action_id`` on ``message_ts``."""
        stored = self._messages.get(channel, {}).get(message_ts or "")
        message = stored.as_json() if stored is not None else {"type": "message", "ts": message_ts}
        return {
            "type": "block_actions",
            "user": self._user_json(user),
            "api_app_id": self.app_id,
            "token": VERIFICATION_TOKEN,
            "container": {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": channel,
                "is_ephemeral": False,
            },
            "trigger_id": self.new_trigger_id(),
            "team": {"id": self.team_id, "domain": TEAM_DOMAIN},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": self._channel_name(channel)},
            "message": message,
            "state": {"values": {}},
            "response_url": self.new_response_url(channel=channel, message_ts=message_ts),
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": block_id,
                    "text": {"type": "plain_text", "text": action_id, "emoji": True},
                    "value": value,
                    "type": "button",
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }

    def view_submission_payload(
        self,
        callback_id: str,
        values: Mapping[str, Mapping[str, str | Mapping[str, Any]]],
        *,
        user: str = "U0ALICE",
        private_metadata: str = "",
        view_id: str | None = None,
    ) -> JSON:
        """A ``view_submission`` payload; ``values`` maps block_id → action_id → value.

        A plain string value stands for a ``plain_text_input``; with ``view_id`` of a view the
        app opened, the payload carries that view's blocks and title.
        """
        state = {
            block: {
                action: {"type": "plain_text_input", "value": v} if isinstance(v, str) else dict(v)
                for action, v in actions.items()
            }
            for block, actions in values.items()
        }
        opened = self.views.get(view_id or "")
        view = (
            dict(opened)
            if opened is not None
            else self._view({"type": "modal"}, view_id=view_id or new_id("V"))
        )
        view |= {"callback_id": callback_id, "private_metadata": private_metadata}
        view["state"] = {"values": state}
        return {
            "type": "view_submission",
            "team": {"id": self.team_id, "domain": TEAM_DOMAIN},
            "user": self._user_json(user),
            "api_app_id": self.app_id,
            "token": VERIFICATION_TOKEN,
            "trigger_id": self.new_trigger_id(),
            "view": view,
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }

    def _user_json(self, user: str) -> JSON:
        name = self.users[user].name if user in self.users else user.lower()
        return {"id": user, "username": name, "name": name, "team_id": self.team_id}

    def _channel_name(self, channel: str) -> str:
        known = self.channels.get(channel)
        if known is None or known.is_im:
            return "directmessage"
        return known.name

    # -- signed HTTP delivery to the app under test ------------------------------------

    async def send_event(
        self,
        app_url: str,
        event: Mapping[str, Any],
        *,
        event_id: str | None = None,
        retry_num: int | None = None,
        retry_reason: str = "http_timeout",
    ) -> Delivery:
        """Deliver an event (or a whole ``event_callback``) as the Events API does.

        Pass the first delivery's ``event_id`` with ``retry_num`` to send Slack's retry.
        """
        envelope = (
            dict(event)
            if event.get("type") == "event_callback"
            else self.event_callback(event, event_id=event_id)
        )
        if event_id is not None:
            envelope["event_id"] = event_id
        headers = {}
        if retry_num is not None:
            headers = {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": retry_reason}
        body = json.dumps(envelope)
        return await self.send_raw(
            app_url, body, content_type="application/json", headers=headers, payload=envelope
        )

    async def send_command(
        self,
        app_url: str,
        command: str = "/lam",
        text: str = "",
        *,
        user: str = "U0ALICE",
        channel: str = "C0OPS",
    ) -> Delivery:
        """Deliver a slash command, form-encoded, with a ``response_url`` on the simulator."""
        fields = self.command_payload(command, text, user=user, channel=channel)
        return await self.send_raw(app_url, urlencode(fields), payload=fields)

    async def send_block_action(
        self,
        app_url: str,
        action_id: str,
        value: str,
        *,
        user: str = "U0ALICE",
        channel: str = "C0OPS",
        message_ts: str | None = None,
        block_id: str = "lam_actions",
    ) -> Delivery:
        """Deliver a button click (``block_actions``) as the form field ``payload``."""
        payload = self.block_actions_payload(
            action_id, value, user=user, channel=channel, message_ts=message_ts, block_id=block_id
        )
        return await self.send_interaction(app_url, payload)

    async def send_view_submission(
        self,
        app_url: str,
        callback_id: str,
        values: Mapping[str, Mapping[str, str | Mapping[str, Any]]],
        *,
        user: str = "U0ALICE",
        private_metadata: str = "",
        view_id: str | None = None,
    ) -> Delivery:
        """Deliver a modal submission (``view_submission``) as the form field ``payload``."""
        payload = self.view_submission_payload(
            callback_id, values, user=user, private_metadata=private_metadata, view_id=view_id
        )
        return await self.send_interaction(app_url, payload)

    async def send_interaction(self, app_url: str, payload: Mapping[str, Any]) -> Delivery:
        """Deliver any interactivity payload, form-encoded as ``payload=<json>``."""
        body = urlencode({"payload": json.dumps(payload)})
        return await self.send_raw(app_url, body, payload=payload)

    async def send_raw(
        self,
        app_url: str,
        body: str | bytes,
        *,
        content_type: str = "application/x-www-form-urlencoded",
        headers: Mapping[str, str] | None = None,
        sign: bool = True,
        timestamp: str | int | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> Delivery:
        """POST ``body`` to the app, signed at ``timestamp`` (default now) unless ``sign`` is false.

        ``headers`` are added last, so they can replace the signature headers: sign one body
        and send another, or pair a good signature with a different timestamp.
        """
        assert self._http is not None, "the SlackSimulator has not been started"
        sent: dict[str, str] = {"Content-Type": content_type}
        if sign:
            sent |= self.signer.headers(body, timestamp=timestamp)
        sent |= dict(headers or {})
        raw = body.encode() if isinstance(body, str) else body
        started = time.perf_counter()
        async with self._http.post(app_url, data=raw, headers=sent) as response:
            text = await response.text()
            elapsed = time.perf_counter() - started
            answer_headers = CIMultiDictProxy(CIMultiDict(response.headers))
        return Delivery(
            response.status, text, answer_headers, elapsed, raw.decode(errors="replace"), payload
        )
