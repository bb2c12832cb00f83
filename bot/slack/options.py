"""What the Slack front is configured with: tokens, where to post, how to notify.

The tokens come from ``bot.config.Settings`` (they are secrets every part of LAM masks);
the settings only the Slack front reads live in ``SlackSettings`` here, read from the
same environment. ``slack_options`` checks both and stops start-up with a message that
names the setting.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.config import Settings
from bot.errors import ConfigError
from connectors import describe_validation_error

CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,30}$")
GROUP_HANDLE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")
DEFAULT_API_URL = "https://slack.com/api/"

Notify = Literal["thread", "dm", "none"]


class SlackSettings(BaseSettings):
    """Environment variables only ``lam serve`` reads."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    slack_api_url: str = Field(default=DEFAULT_API_URL, alias="SLACK_API_URL")
    """The Web API base URL; a local Slack simulator in tests."""
    lam_audit_channel: str | None = Field(default=None, alias="LAM_AUDIT_CHANNEL")
    """Channel id every audit event is posted to, e.g. ``C0123AUDIT``; unset posts none."""
    lam_channel_environments: str = Field(default="", alias="LAM_CHANNEL_ENVIRONMENTS")
    """``C0PROD=prod,C0OPS=staging``: requests made in a bound channel act only there."""
    lam_approver_notify: Notify = Field(default="thread", alias="LAM_APPROVER_NOTIFY")
    """``thread`` mentions approvers in the request's thread, ``dm`` messages each one."""
    lam_approver_groups: str = Field(default="", alias="LAM_APPROVER_GROUPS")
    """``role:lead=leads``: the Slack user group to notify for a policy approver subject."""
    lam_slack_groups_refresh_seconds: float = Field(
        default=300.0, gt=0, alias="LAM_SLACK_GROUPS_REFRESH_SECONDS"
    )
    lam_slack_poll_seconds: float = Field(default=1.0, gt=0, alias="LAM_SLACK_POLL_SECONDS")
    """How often progress and the audit poster look for changes made by other processes."""
    lam_slack_lease_seconds: float = Field(default=15.0, gt=0, alias="LAM_SLACK_LEASE_SECONDS")
    """How long a replica that died keeps the Slack lease before another takes it over."""
    lam_slack_update_seconds: float = Field(default=1.0, ge=0, alias="LAM_SLACK_UPDATE_SECONDS")
    """Least time between two updates of one plan message while its request is moving."""
    lam_slack_concurrency: int = Field(default=4, ge=1, le=1000, alias="LAM_SLACK_CONCURRENCY")
    """Deliveries whose work starts at once; the others wait, already acknowledged."""
    lam_slack_ingress: Literal["process", "inline"] = Field(
        default="process", alias="LAM_SLACK_INGRESS"
    )
    """``process``: Slack's deliveries are acknowledged by a process of their own
    (``bot.slack.ingress``), so acks never wait for work; ``inline``: in this one."""
    lam_slack_work_nice: int = Field(default=10, ge=0, le=19, alias="LAM_SLACK_WORK_NICE")
    """How much lower the work's CPU priority is than the ingress process's."""


def load_slack_settings() -> SlackSettings:
    try:
        return SlackSettings()
    except ValidationError as error:
        first = error.errors()[0]
        raise ConfigError(f"invalid setting {describe_validation_error(first)}") from error


@dataclass(frozen=True)
class SlackOptions:
    """Everything the Slack front needs besides the engine, checked."""

    bot_token: str
    signing_secret: str | None = None
    """Needed over HTTP; Socket Mode deliveries are authenticated by the WebSocket."""
    app_token: str | None = None
    """Set: Socket Mode. Unset: the HTTP Events API."""
    api_url: str = DEFAULT_API_URL
    audit_channel: str | None = None
    channel_environments: Mapping[str, str] = field(default_factory=dict)
    notify: Notify = "thread"
    approver_groups: Mapping[str, str] = field(default_factory=dict)
    """Policy approver subject (``role:lead``) → Slack user group handle (``leads``)."""
    groups_refresh: float = 300.0
    poll_interval: float = 1.0
    update_interval: float = 1.0
    """Least seconds between two updates of one plan message while its request moves on."""
    lease_ttl: float = 15.0
    """Seconds a dead replica keeps the Slack lease (``bot.slack._lease``) before another
    takes it; the holder renews it every third of that."""
    freeze_startup_objects: bool = False
    """Move what exists once the front is up out of the garbage collector's view
    (``gc.freeze``): ``lam serve`` does, so that a full collection does not pause acks
    for tens of milliseconds walking objects that live as long as the process."""
    legacy_state_path: Path | None = None
    """Where an older LAM kept its Slack state (``slack-state.json``), moved into the store
    at start."""
    page_size: int = 10
    """Items per page of a ``/lam`` listing."""
    concurrency: int = 4
    """Pieces of handed-off work started at once (``bot.slack._tasks.Background``): few, so
    that acks, on the same event loop, wait behind few slices of work."""

    ingress_process: bool = False
    """Acknowledge Slack's deliveries in a child process (``bot.slack.ingress``) and do
    their work in this one; ``False``: both here."""
    work_nice: int = 0
    """With the ingress process: how much this process lowers its CPU priority
    (``nice``) once the ingress runs, so that on a busy CPU acks come before work."""
    log_format: str = "console"
    log_level: str = "warning"
    """How the ingress process logs: as this one does."""

    @property
    def socket_mode(self) -> bool:
        return self.app_token is not None


def slack_options(settings: Settings, slack: SlackSettings) -> SlackOptions:
    """Check the Slack settings against each other and the environments LAM knows."""
    bot_token = _secret(settings.slack_bot_token)
    app_token = _secret(settings.slack_app_token)
    signing_secret = _secret(settings.slack_signing_secret)
    if bot_token is None:
        raise ConfigError(
            "SLACK_BOT_TOKEN is not set; lam serve needs the app's bot token (xoxb-…),"
            " from OAuth & Permissions in the app's settings"
        )
    if not bot_token.startswith("xoxb-"):
        raise ConfigError("SLACK_BOT_TOKEN does not start with 'xoxb-'; use the bot token")
    if app_token is not None and not app_token.startswith("xapp-"):
        raise ConfigError(
            "SLACK_APP_TOKEN does not start with 'xapp-'; use an app-level token with the"
            " connections:write scope, or unset it to serve the HTTP Events API"
        )
    if app_token is None and signing_secret is None:
        raise ConfigError(
            "SLACK_SIGNING_SECRET is not set; the HTTP Events API needs it to verify"
            " requests (Basic Information → App Credentials), or set SLACK_APP_TOKEN for"
            " Socket Mode"
        )
    api_url = slack.slack_api_url.strip()
    if not api_url.startswith(("https://", "http://")):
        raise ConfigError(f"SLACK_API_URL: {api_url!r} is not an http(s) URL")
    audit_channel = slack.lam_audit_channel or None
    if audit_channel is not None and not CHANNEL_ID.match(audit_channel):
        raise ConfigError(
            f"LAM_AUDIT_CHANNEL: {audit_channel!r} is not a channel id; use the id from the"
            " channel's details, e.g. C0123ABCD"
        )
    return SlackOptions(
        bot_token=bot_token,
        signing_secret=signing_secret,
        app_token=app_token,
        api_url=api_url if api_url.endswith("/") else api_url + "/",
        audit_channel=audit_channel,
        channel_environments=channel_environments(
            slack.lam_channel_environments, settings.environments
        ),
        notify=slack.lam_approver_notify,
        approver_groups=approver_groups(slack.lam_approver_groups),
        groups_refresh=slack.lam_slack_groups_refresh_seconds,
        poll_interval=slack.lam_slack_poll_seconds,
        update_interval=slack.lam_slack_update_seconds,
        lease_ttl=slack.lam_slack_lease_seconds,
        concurrency=slack.lam_slack_concurrency,
        ingress_process=slack.lam_slack_ingress == "process",
        work_nice=slack.lam_slack_work_nice,
        log_format=settings.lam_log_format,
        log_level=settings.lam_log_level,
        legacy_state_path=settings.home / "slack-state.json",
        freeze_startup_objects=True,
    )


def channel_environments(text: str, environments: Sequence[str]) -> Mapping[str, str]:
    """Parse ``C0PROD=prod,C0OPS=staging``; raises ``ConfigError`` naming the bad pair."""
    bound: dict[str, str] = {}
    for channel, environment in _pairs(text, "LAM_CHANNEL_ENVIRONMENTS"):
        if not CHANNEL_ID.match(channel):
            raise ConfigError(
                f"LAM_CHANNEL_ENVIRONMENTS: {channel!r} is not a channel id, e.g. C0123ABCD"
            )
        if environment not in environments:
            raise ConfigError(
                f"LAM_CHANNEL_ENVIRONMENTS: {channel} is bound to {environment!r}, which is not"
                f" one of LAM_ENVIRONMENTS ({', '.join(environments)})"
            )
        if bound.get(channel, environment) != environment:
            raise ConfigError(f"LAM_CHANNEL_ENVIRONMENTS: {channel} is bound twice")
        bound[channel] = environment
    return MappingProxyType(bound)


def approver_groups(text: str) -> Mapping[str, str]:
    """Parse ``role:lead=leads``; raises ``ConfigError`` naming the bad pair."""
    groups: dict[str, str] = {}
    for subject, handle in _pairs(text, "LAM_APPROVER_GROUPS"):
        if not subject.startswith(("role:", "group:", "user:")):
            raise ConfigError(
                f"LAM_APPROVER_GROUPS: {subject!r} is not a policy subject, e.g. role:lead"
            )
        handle = handle.removeprefix("@")
        if not GROUP_HANDLE.match(handle):
            raise ConfigError(f"LAM_APPROVER_GROUPS: {handle!r} is not a user group handle")
        groups[subject] = handle
    return MappingProxyType(groups)


def _pairs(text: str, setting: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{setting}: {item.strip()!r} is not KEY=VALUE")
        pairs.append((key.strip(), value.strip()))
    return pairs


def _secret(value: SecretStr | None) -> str | None:
    if isinstance(value, SecretStr) and value.get_secret_value():
        return value.get_secret_value()
    return None
