"""LAM's check of every HTTP delivery, before bolt sees it.

Slack signs ``v0:{timestamp}:{body}`` with the app's signing secret. A request is refused
with 401 when the timestamp is missing, not a number, or more than five minutes off, or
when the signature does not match the body; with 400 when the verified body cannot be
parsed or is not shaped like a Slack payload; with 413 when it is too large. A signed
request seen before (same signature) inside the five minutes is a replay: it is answered
200 and nothing happens, so a replayed click or command creates nothing new.

The guard parses the body once; the payload's fields are checked once too, by
``bot.slack.app.dispatch``, which both transports go through.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from bot.slack._payload import MalformedPayload

MAX_AGE = 300
"""Seconds a signature stays valid, as Slack's own verification allows."""
MAX_BODY = 1024 * 1024
TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
SIGNATURE = re.compile(r"^v0=[0-9a-f]{64}$")
MAX_REMEMBERED = 100_000


@dataclass(frozen=True)
class Verdict:
    """What the guard decided: a refusal (``status`` and ``reason``) or a payload to dispatch."""

    status: int
    reason: str
    payload: dict[str, Any] | None = None

    @property
    def accepted(self) -> bool:
        return self.payload is not None


class RequestGuard:
    """Verifies, de-replays and parses Slack's HTTP deliveries."""

    def __init__(self, signing_secret: str, *, clock: Callable[[], float] = time.time) -> None:
        self._secret = signing_secret.encode()
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, headers: Mapping[str, str], body: bytes) -> Verdict:
        stamp = headers.get("X-Slack-Request-Timestamp", "")
        signature = headers.get("X-Slack-Signature", "")
        if not TIMESTAMP.match(stamp):
            return Verdict(401, "missing or non-numeric X-Slack-Request-Timestamp")
        now = self._clock()
        if abs(now - int(stamp)) > MAX_AGE:
            return Verdict(401, "X-Slack-Request-Timestamp is more than five minutes off")
        if not SIGNATURE.match(signature):
            return Verdict(401, "missing or malformed X-Slack-Signature")
        expected = (
            "v0="
            + hmac.new(
                self._secret, b"v0:" + stamp.encode() + b":" + body, hashlib.sha256
            ).hexdigest()
        )
        if not hmac.compare_digest(expected, signature):
            return Verdict(401, "the signature does not match the body")
        if self._replayed(signature, now):
            return Verdict(200, "replay of a request already received")
        try:
            payload = parse(body, headers.get("Content-Type", ""))
        except MalformedPayload as error:
            return Verdict(400, str(error))
        return Verdict(200, "ok", payload)

    def _replayed(self, signature: str, now: float) -> bool:
        while self._seen and next(iter(self._seen.values())) < now:
            self._seen.popitem(last=False)
        if signature in self._seen:
            return True
        self._seen[signature] = now + 2 * MAX_AGE
        if len(self._seen) > MAX_REMEMBERED:
            self._seen.popitem(last=False)
        return False


def parse(body: bytes, content_type: str) -> dict[str, Any]:
    """The payload of a verified body: JSON (events), ``payload=`` (interactions) or a form.

    Raises ``MalformedPayload`` naming what is wrong. Only the payload's being an object is
    checked here; its fields are checked by ``dispatch``.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPayload("the body is not UTF-8") from None
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json":
        return _object(_json(text))
    if media != "application/x-www-form-urlencoded":
        raise MalformedPayload(f"unsupported Content-Type {media or 'none'!r}")
    try:
        fields = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError:
        raise MalformedPayload("the form body cannot be parsed") from None
    form = dict(fields)
    if len(form) != len(fields):
        raise MalformedPayload("a form field is repeated")
    if "payload" in form:
        return _object(_json(form["payload"]))
    return form


def _object(payload: object) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise MalformedPayload(f"the payload is a JSON {type(payload).__name__}, not an object")
    return payload


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        raise MalformedPayload("the body is not valid JSON") from None
