"""Canary secrets never reach Slack: not in a message, an update, a file or the audit channel.

``lam serve``'s front, built from the environment as it builds it, runs against the Slack
simulator with a canary bot token and signing secret. A mention is planned by the model
(the real ``openai`` client, a canary key) into steps whose servers echo their connector's
secret back, in output and in failures; the request is revised twice and finishes. Every
Web API call the simulator recorded (but the bot token's own ``Authorization`` header),
every upload and ``response_url`` post, LAM's answers to Slack, the audit trail, the
model's requests and the logs are then searched for every canary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bot.audit import Redactor
from bot.config import Settings
from bot.engine import Engine
from bot.slack.options import load_slack_settings, slack_options
from bot.slack.server import running
from bot.slack.service import open_service
from bot.slack.transport import EVENTS_PATH
from bot.wiring import open_engine
from tests.slack.conftest import subject, texts
from tests.support.http_service import HttpService, serving
from tests.support.openai_server import ScriptedOpenAI, tool_calls
from tests.support.policies import write_policy
from tests.support.slack import SlackSimulator
from tests.test_secret_canary import (
    MASK,
    Canaries,
    http_instance,
    leaks,
    load_lam,
    logging_restored,
    mcp_stdio_instance,
    sees,
    sent_to_model,
    stored,
)

AUDIT_CHANNEL = "C0AUDIT"
OPS_CHANNEL = "C0OPS"
POLICY = f"g, {subject('U0ALICE')}, role:ops, *\np, role:ops, staging, *, *, run, allow\n"


@dataclass(frozen=True)
class SlackCanaries(Canaries):
    """The connectors' canaries, and the Slack app's own secrets."""

    slack_bot_token: str
    slack_signing_secret: str

    @classmethod
    def fresh(cls) -> SlackCanaries:
        return cls(
            **dataclasses.asdict(Canaries.fresh()),
            slack_bot_token=f"xoxb-canary-slack-bot-{uuid.uuid4().hex}",
            slack_signing_secret=f"canary-slack-signing-{uuid.uuid4().hex}",
        )


@pytest.fixture
def redactor(capsys: pytest.CaptureFixture[str]) -> Iterator[Redactor]:
    """``lam``'s process-wide redactor; the logging it is given is undone afterwards."""
    with logging_restored():
        yield Redactor()


def audit_posted(sim: SlackSimulator) -> tuple[str, list[int]]:
    """The audit channel's text, and the sequence numbers of the events it shows."""
    posted = "\n".join(
        str(call.args.get("text"))
        for call in sim.calls_to("chat.postMessage")
        if call.ok and call.args.get("channel") == AUDIT_CHANNEL
    )
    return posted, [int(seq) for seq in re.findall(r"^`(\d+)`", posted, re.MULTILINE)]


def seen_by_slack(sim: SlackSimulator, answers: list[str]) -> dict[str, str]:
    """Everything LAM sent Slack, by where; the bot token's own header left out."""
    found = {
        f"slack call #{number} {call.method}": json.dumps(
            {
                "args": call.args,
                "headers": {k: v for k, v in call.headers.items() if k.lower() != "authorization"},
            },
            default=str,
        )
        for number, call in enumerate(sim.calls)
    }
    for upload in sim.uploads.values():
        found[f"upload {upload.id}"] = repr(upload)
    for post in sim.response_posts:
        found[f"response_url post {post.response_id}"] = json.dumps(post.body, default=str)
    for number, answer in enumerate(answers):
        found[f"answer to Slack #{number}"] = answer
    return found


@contextlib.asynccontextmanager
async def slack_front(engine: Engine, settings: Settings) -> AsyncIterator[str]:
    """The front ``lam serve`` runs over HTTP; leaving it posts what the audit channel lacks,
    as ``lam serve`` does when it stops."""
    # lam serve freezes its start-up objects for the collector; a test process must not.
    options = dataclasses.replace(
        slack_options(settings, load_slack_settings()), freeze_startup_objects=False
    )
    async with aiohttp.ClientSession() as session:
        async with (
            open_service(engine, options, session) as front,
            running(front, options, host="127.0.0.1", port=0, health_port=None) as url,
        ):
            yield url
            await front.idle()
        assert front.poster is not None
        await front.poster.drain()


async def test_no_secret_reaches_slack_or_its_audit_channel(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    redactor: Redactor,
) -> None:
    """A request whose steps echo connector secrets is asked, run and audited in Slack, masked."""
    canaries = SlackCanaries.fresh()
    service = HttpService()
    async with (
        serving(service) as api,
        ScriptedOpenAI.running() as model,
        SlackSimulator(
            bot_token=canaries.slack_bot_token, signing_secret=canaries.slack_signing_secret
        ) as sim,
    ):
        monkeypatch.delenv("REDIS_URL", raising=False)
        monkeypatch.delenv("SLACK_APP_TOKEN", raising=False)
        for name, value in {
            "LAM_HOME": str(tmp_path / "home"),
            "LAM_POLICY_DIR": str(write_policy(tmp_path / "policies", POLICY)),
            "LAM_MODEL": "lam-test-model",
            "OPENAI_BASE_URL": model.base_url,
            "OPENAI_API_KEY": canaries.openai,
            "SLACK_BOT_TOKEN": canaries.slack_bot_token,
            "SLACK_SIGNING_SECRET": canaries.slack_signing_secret,
            "SLACK_API_URL": sim.api_url,
            "LAM_AUDIT_CHANNEL": AUDIT_CHANNEL,
            "LAM_CHANNEL_ENVIRONMENTS": f"{OPS_CHANNEL}=staging",
            "LAM_SLACK_POLL_SECONDS": "0.02",
            "LAM_SLACK_UPDATE_SECONDS": "0",
            "LAM_CANARY_HTTP_TOKEN": canaries.http,
            "LAM_CANARY_MCP_TOKEN": canaries.mcp_env,
        }.items():
            monkeypatch.setenv(name, value)
        model.enqueue(
            tool_calls(("api__echo", {}), ("tools__env", {"name": "TOKEN"}), ("api__whoami", {})),
            tool_calls(
                ("tools__fail_with_env", {"name": "TOKEN"}),
                check=sees(f"invalid credentials 'Bearer {MASK}'"),
            ),
            tool_calls(("api__echo", {}), check=sees(f"fail_with_env: {MASK}")),
        )
        settings = load_lam(
            tmp_path, monkeypatch, redactor, [http_instance(api), mcp_stdio_instance()]
        )
        engine = await open_engine(settings, redactor)
        try:
            assert not engine.catalog.failures
            async with slack_front(engine, settings) as url:
                mention = sim.app_mention("check the api and the tools", channel=OPS_CHANNEL)
                delivery = await sim.send_event(url + EVENTS_PATH, mention)
                results = await sim.wait_for_call(
                    "chat.postMessage",
                    lambda call: (
                        call.args.get("thread_ts") == mention["ts"]
                        and "finished successfully" in texts(call)
                    ),
                )
            written = await stored(engine)
            audited = [event.seq async for event in engine.store.audit_events()]
            (record,) = await engine.history()
        finally:
            await engine.aclose()
        model.assert_done()
    written |= sent_to_model(model)
    written |= seen_by_slack(sim, [delivery.body])
    written["stderr"] = capsys.readouterr().err

    # The request ran through Slack, every secret reached its destination, and the audit
    # channel shows every event, failures with their (masked) reasons included.
    assert delivery.status == 200
    assert (record.state, record.revisions) == ("succeeded", 2), record.reason
    bearer = f"Bearer {canaries.http}"
    assert [seen.headers.get("Authorization") for seen in service.received] == [bearer] * 3
    assert record.previous[0].results[1].output == MASK
    assert f"headers.Authorization: Bearer {MASK}" in texts(results)
    posted, seqs = audit_posted(sim)
    assert seqs == audited
    assert f"invalid credentials 'Bearer {MASK}'" in posted
    assert f"fail_with_env: {MASK}" in posted
    assert {call.token for call in sim.calls} == {canaries.slack_bot_token}
    openai_key = f"Bearer {canaries.openai}"
    assert [request.headers["Authorization"] for request in model.requests] == [openai_key] * 3

    assert not leaks(canaries, written)
