"""The Slack front: bolt listeners, Block Kit rendering, the audit channel, ``lam serve``.

It only renders and collects input and calls the engine; governance stays in the engine.
``lam serve`` is ``bot.slack.server.serve``; it is not imported here, so that the ingress
process (``python -m bot.slack.ingress``) starts without it.
"""

from bot.slack.options import SlackOptions, SlackSettings, load_slack_settings, slack_options
from bot.slack.service import SlackService, open_service

__all__ = [
    "SlackOptions",
    "SlackService",
    "SlackSettings",
    "load_slack_settings",
    "open_service",
    "slack_options",
]
