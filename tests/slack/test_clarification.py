"""When the model asks a question, the requester answers in the thread and the request goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.planning.aliases import AliasPlanner
from bot.planning.chain import ChainPlanner
from tests.slack.conftest import GatedConnector, Lam, texts
from tests.support.openai_server import ScriptedOpenAI, planner_on, tool_calls
from tests.support.slack import TEAM_ID

WHICH = "Which service: web or api?"


@pytest.fixture
async def asking_lam(lam: Lam, openai_server: ScriptedOpenAI) -> AsyncIterator[Lam]:
    """LAM planning with the offline phrasings, then the scripted model."""
    planner = ChainPlanner(AliasPlanner(), planner_on(openai_server))
    lam.engine.planner = planner
    yield lam
    await planner.aclose()


def reply(user: str, text: str, ts: str, thread_ts: str) -> dict[str, Any]:
    """A plain ``message`` event: ``user`` replying in a thread of #ops."""
    return {
        "type": "message",
        "user": user,
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "thread_ts": thread_ts,
        "team": TEAM_ID,
        "channel": "C0OPS",
        "channel_type": "channel",
    }


async def test_the_requester_answers_in_the_thread(
    asking_lam: Lam, openai_server: ScriptedOpenAI, connector: GatedConnector
) -> None:
    """The question shows on the plan; others' replies are refused; the requester's runs it."""
    lam, sim = asking_lam, asking_lam.sim
    openai_server.enqueue(
        tool_calls(("clarify", {"question": WHICH})),
        tool_calls(("test__restart", {"service": "web"})),
    )
    mention = sim.app_mention("bounce it", channel="C0OPS")
    thread = mention["ts"]
    assert await lam.event(mention) == 200
    await sim.wait_for_call(
        "chat.update", lambda c: WHICH in texts(c) and "waiting for an answer" in texts(c)
    )
    asked = await sim.wait_for_call(
        "chat.postMessage", lambda c: c.args.get("thread_ts") == thread and WHICH in texts(c)
    )
    assert "<@U0ALICE>" in texts(asked) and "reply in this thread" in texts(asked)

    assert await lam.event(reply("U0DAVE", "api", "5.000001", thread)) == 200
    refused = await sim.wait_for_call("chat.postEphemeral", lambda c: c.args["user"] == "U0DAVE")
    assert "Only <@U0ALICE> can answer" in texts(refused)
    await lam.idle()
    [waiting] = await lam.engine.store.history()
    assert (waiting.state, waiting.question) == ("clarifying", WHICH)

    answer = reply("U0ALICE", "web", "5.000002", thread)
    assert await lam.event(answer) == 200
    done = await sim.wait_for_call("chat.update", lambda c: "finished successfully" in texts(c))
    assert "answered: “web”" in texts(done)
    # Slack's retry of the answer changes nothing.
    assert await lam.event(answer, retry=1) == 200
    await lam.idle()
    [record] = await lam.engine.store.history()
    assert (record.id, record.state) == (waiting.id, "succeeded")
    assert [(turn.question, turn.answer) for turn in record.conversation] == [(WHICH, "web")]
    assert connector.calls["test.restart"] == 1


async def test_an_answer_that_mentions_lam_is_an_answer_too(
    asking_lam: Lam, openai_server: ScriptedOpenAI, connector: GatedConnector
) -> None:
    """Mentioning LAM in the reply answers the question rather than asking something new."""
    lam, sim = asking_lam, asking_lam.sim
    openai_server.enqueue(
        tool_calls(("clarify", {"question": WHICH})),
        tool_calls(("test__restart", {"service": "api"})),
    )
    mention = sim.app_mention("bounce it", channel="C0OPS")
    assert await lam.event(mention) == 200
    await sim.wait_for_call("chat.update", lambda c: WHICH in texts(c))
    answer = sim.app_mention("api please", channel="C0OPS", thread_ts=mention["ts"])
    assert await lam.event(answer) == 200
    await sim.wait_for_call("chat.update", lambda c: "finished successfully" in texts(c))
    await lam.idle()
    [record] = await lam.engine.store.history()
    assert [turn.answer for turn in record.conversation] == ["api please"]
    assert connector.calls["test.restart"] == 1
