"""The app manifest asks for what LAM uses and no more, and points Slack at LAM's one path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bot.slack.transport import EVENTS_PATH

MANIFEST = Path(__file__).resolve().parents[2] / "slack" / "manifest.yaml"
SCOPES = {
    "app_mentions:read",
    "chat:write",
    "commands",
    "files:write",
    "im:history",
    "channels:history",
    "groups:history",
    "usergroups:read",
    "channels:read",
    "groups:read",
}


def test_manifest_scopes_events_and_urls() -> None:
    """Scopes are exactly LAM's, its events are subscribed, and every URL is /slack/events."""
    manifest: dict[str, Any] = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == SCOPES
    assert "user" not in manifest["oauth_config"]["scopes"]
    settings = manifest["settings"]
    events = set(settings["event_subscriptions"]["bot_events"])
    assert {"app_mention", "app_home_opened", "message.im", "message.channels"} <= events
    [command] = manifest["features"]["slash_commands"]
    assert command["command"] == "/lam" and command["should_escape"] is True
    urls = [command["url"], settings["event_subscriptions"]["request_url"]]
    urls.append(settings["interactivity"]["request_url"])
    assert all(url.endswith(EVENTS_PATH) for url in urls)
