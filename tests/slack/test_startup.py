"""Start-up stops with a message naming the setting when Slack is not configured right."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import pytest

from bot.config import Settings
from bot.errors import ConfigError
from bot.slack.options import (
    SlackOptions,
    approver_groups,
    channel_environments,
    load_slack_settings,
    slack_options,
)
from bot.slack.server import serve
from bot.slack.service import open_service
from tests.conftest import EngineFactory
from tests.support.slack import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, SlackSimulator

ENVIRONMENTS = ("dev", "staging", "prod")


def options_from(monkeypatch: pytest.MonkeyPatch, **env: str) -> SlackOptions:
    for name in (
        "SLACK_BOT_TOKEN",
        "SLACK_APP_TOKEN",
        "SLACK_SIGNING_SECRET",
        "SLACK_API_URL",
        "LAM_AUDIT_CHANNEL",
        "LAM_CHANNEL_ENVIRONMENTS",
        "LAM_APPROVER_NOTIFY",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return slack_options(Settings(), load_slack_settings())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SLACK_BOT_TOKEN is not set"),
        ({"SLACK_BOT_TOKEN": "xoxp-user-token"}, "SLACK_BOT_TOKEN does not start with 'xoxb-'"),
        ({"SLACK_BOT_TOKEN": BOT_TOKEN}, "SLACK_SIGNING_SECRET is not set"),
        (
            {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": "xoxb-not-an-app-token"},
            "SLACK_APP_TOKEN does not start with 'xapp-'",
        ),
        (
            {
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_APP_TOKEN": APP_TOKEN,
                "SLACK_API_URL": "ftp://x",
            },
            "SLACK_API_URL",
        ),
        (
            {
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_APP_TOKEN": APP_TOKEN,
                "LAM_AUDIT_CHANNEL": "#audit",
            },
            "LAM_AUDIT_CHANNEL: '#audit' is not a channel id",
        ),
        (
            {
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_APP_TOKEN": APP_TOKEN,
                "LAM_APPROVER_NOTIFY": "pigeon",
            },
            "LAM_APPROVER_NOTIFY",
        ),
    ],
)
def test_missing_or_wrong_settings(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    """Each missing or malformed Slack setting is named in the start-up error."""
    with pytest.raises(ConfigError, match=message):
        options_from(monkeypatch, **env)


def test_socket_mode_needs_no_signing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """With an app token, the HTTP signing secret is optional and the options say Socket Mode."""
    options = options_from(
        monkeypatch,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_APP_TOKEN=APP_TOKEN,
        SLACK_API_URL="http://127.0.0.1:9/api",
        LAM_CHANNEL_ENVIRONMENTS="C0PROD=prod, C0OPS=staging",
    )
    assert options.socket_mode and options.api_url == "http://127.0.0.1:9/api/"
    assert dict(options.channel_environments) == {"C0PROD": "prod", "C0OPS": "staging"}


def test_channel_and_group_maps_are_checked() -> None:
    """Channel bindings name real environments and channel ids; approver groups name subjects."""
    for text, message in [
        ("C0PROD=production", "not one of LAM_ENVIRONMENTS"),
        ("#prod=prod", "not a channel id"),
        ("C0PROD", "not KEY=VALUE"),
        ("C0PROD=prod,C0PROD=staging", "bound twice"),
    ]:
        with pytest.raises(ConfigError, match=message):
            channel_environments(text, ENVIRONMENTS)
    assert dict(approver_groups("role:lead=@leads")) == {"role:lead": "leads"}
    with pytest.raises(ConfigError, match="not a policy subject"):
        approver_groups("lead=leads")


async def test_slack_refusals_stop_start_up(
    sim: SlackSimulator, options: SlackOptions, make_engine: EngineFactory
) -> None:
    """A refused token, an unreachable Slack, or an unusable audit channel stop start-up."""
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    dead_port = free.getsockname()[1]
    free.close()
    cases = [
        (
            SlackOptions(bot_token="xoxb-wrong", api_url=sim.api_url),
            "refused by Slack .invalid_auth",
        ),
        (
            SlackOptions(bot_token=BOT_TOKEN, api_url=f"http://127.0.0.1:{dead_port}/api/"),
            "SLACK_API_URL: cannot reach Slack",
        ),
        (
            SlackOptions(bot_token=BOT_TOKEN, api_url=sim.api_url, audit_channel="C0NOPE"),
            "LAM_AUDIT_CHANNEL: 'C0NOPE' cannot be used .channel_not_found",
        ),
        (
            SlackOptions(bot_token=BOT_TOKEN, api_url=sim.api_url, audit_channel="C0OLD"),
            "LAM_AUDIT_CHANNEL: 'C0OLD' is archived",
        ),
    ]
    async with aiohttp.ClientSession() as session:
        for options_case, message in cases:
            with pytest.raises(ConfigError, match=message):
                async with open_service(make_engine(), options_case, session):
                    pass


async def test_serve_refuses_before_opening_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``serve`` without a bot token fails at once and creates no store."""
    monkeypatch.setenv("LAM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SIGNING_SECRET)
    with pytest.raises(ConfigError, match="SLACK_BOT_TOKEN is not set"):
        await serve(Settings())
    assert not (tmp_path / "home").exists()
