"""Malformed, unknown or incomplete payloads get a clean refusal, never a crash or an action."""

from __future__ import annotations

from typing import Any

from tests.slack.conftest import Lam, texts

MALFORMED: list[Any] = [
    [1, 2, 3],
    "just a string",
    {"type": "block_actions", "actions": "approve"},
    {"type": "block_actions", "user": {"id": "U0BOB"}, "actions": [{"value": "no action id"}]},
    {"type": "block_actions", "user": 42, "actions": []},
    {"type": "view_submission", "view": "not an object"},
    {"type": "event_callback"},
    {"type": "event_callback", "event": ["app_mention"]},
    {"type": "event_callback", "event": {"type": "app_mention", "user": {"id": 7}}},
]
UNKNOWN: list[dict[str, Any]] = [
    {"type": "something_new"},
    {},
    {"type": "block_actions", "actions": [{"action_id": "lam.unknown", "value": "x"}]},
]
INCOMPLETE_EVENTS: list[dict[str, Any]] = [
    {"type": "app_mention", "text": "<@U0LAMBOT> restart api", "channel": "C0OPS"},
    {"type": "app_mention", "user": "U0ALICE", "text": "<@U0LAMBOT> restart api"},
    {"type": "message", "channel_type": "im", "user": "U0ALICE", "channel": "D0ALICE"},
]


async def test_malformed_payloads_are_refused(lam: Lam) -> None:
    """Payloads of the wrong shape are a 4xx over HTTP and an empty ack over Socket Mode."""
    for payload in MALFORMED + UNKNOWN:
        if lam.transport == "http":
            status, body = await lam.interaction(payload)
            assert 400 <= status < 500 and "error" in body, payload
        elif isinstance(payload, dict):
            # The simulator's envelopes carry objects; lists and strings are tested over HTTP.
            ack = await lam.sim.socket_send("interactive", payload)
            assert ack.payload is None, payload
    await lam.idle()
    assert await lam.engine.store.history() == []
    assert [c.method for c in lam.sim.calls if c.method.startswith("chat.")] == []


async def test_events_missing_fields_do_nothing(lam: Lam) -> None:
    """An event without a user, a channel or a timestamp is acknowledged and ignored."""
    for event in INCOMPLETE_EVENTS:
        assert await lam.event(event) == 200
    await lam.idle()
    assert await lam.engine.store.history() == []


async def test_lam_keeps_working_after_bad_input(lam: Lam) -> None:
    """After a run of bad payloads, a good request is planned as usual."""
    for payload in MALFORMED:
        if lam.transport == "http":
            await lam.interaction(payload)
        elif isinstance(payload, dict):
            await lam.sim.socket_send("interactive", payload)
    assert await lam.event(lam.sim.app_mention("restart api", channel="C0OPS")) == 200
    await lam.sim.wait_for_call("chat.update", lambda c: "finished successfully" in texts(c))
