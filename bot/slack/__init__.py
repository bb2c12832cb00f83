"""The Slack front: bolt listeners, Block Kit rendering, the audit channel, ``lam serve``.

It only renders and collects input and calls the engine; governance stays in the engine.
"""

from bot.slack.options import SlackOptions, SlackSettings, load_slack_settings, slack_options
from bot.slack.server import serve
from bot.slack.service import SlackService, open_service

__all__ = [
    "SlackOptions",
    "SlackService",
    "SlackSettings",
    "load_slack_settings",
    "open_service",
    "serve",
    "slack_options",
]
