"""The shape of a Slack payload, checked before bolt reads it.

Bolt reads fields such as ``user``, ``team``, ``event``, ``view`` and ``actions`` assuming
Slack's types; a payload with a string where an object belongs makes it raise (HTTP 500,
or a dropped Socket Mode envelope). LAM checks those fields' types first and refuses a
payload that would not fit, with a message naming the field. Unknown fields are fine.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Ref(_Loose):
    id: str | None = None


class _User(_Loose):
    id: str | None = None
    team_id: str | None = None


class _Authorization(_Loose):
    enterprise_id: str | None = None
    team_id: str | None = None
    user_id: str | None = None
    is_enterprise_install: bool | None = None


class _Message(_Loose):
    user: str | _User | None = None
    thread_ts: str | None = None
    ts: str | None = None
    text: str | None = None


class _Event(_Loose):
    type: str
    user: str | _User | None = None
    user_team: str | None = None
    team: str | None = None
    channel: str | _Ref | None = None
    channel_type: str | None = None
    text: str | None = None
    ts: str | None = None
    thread_ts: str | None = None
    subtype: str | None = None
    bot_id: str | None = None
    tab: str | None = None
    item: dict[str, Any] | None = None
    message: _Message | None = None
    previous_message: _Message | None = None


class _Action(_Loose):
    action_id: str
    block_id: str | None = None
    value: str | None = None
    type: str | None = None


class _ResponseUrl(_Loose):
    response_url: str | None = None


class _ViewState(_Loose):
    values: dict[str, dict[str, dict[str, Any]]] = {}


class _View(_Loose):
    id: str | None = None
    type: str | None = None
    callback_id: str | None = None
    private_metadata: str | None = None
    team_id: str | None = None
    app_installed_team_id: str | None = None
    state: _ViewState | None = None


class _Payload(_Loose):
    type: str | None = None
    team_id: str | None = None
    user_id: str | None = None
    channel_id: str | None = None
    enterprise_id: str | None = None
    event_id: str | None = None
    command: str | None = None
    text: str | None = None
    trigger_id: str | None = None
    response_url: str | None = None
    response_urls: list[_ResponseUrl] | None = None
    thread_ts: str | None = None
    is_ext_shared_channel: bool | None = None
    team: str | _Ref | None = None
    enterprise: str | _Ref | None = None
    user: str | _User | None = None
    channel: str | _Ref | None = None
    authorizations: list[_Authorization] | None = None
    event: _Event | None = None
    view: _View | None = None
    actions: list[_Action] | None = None
    message: _Message | None = None
    previous_message: _Message | None = None
    container: dict[str, Any] | None = None


class MalformedPayload(ValueError):
    """The payload is not shaped like anything Slack sends; nothing was dispatched."""


def check_payload(body: object) -> dict[str, Any]:
    """``body`` if it is a JSON object whose known fields have Slack's types.

    Raises ``MalformedPayload`` naming the first field that does not fit.
    """
    if not isinstance(body, dict):
        raise MalformedPayload(f"the payload is a JSON {type(body).__name__}, not an object")
    try:
        _Payload.model_validate(body)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "payload"
        raise MalformedPayload(f"field {where!r}: {first['msg']}") from None
    if body.get("type") == "event_callback" and not isinstance(body.get("event"), dict):
        raise MalformedPayload("an event_callback without an 'event' object")
    return body
