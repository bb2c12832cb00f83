"""The tamper-evident audit trail: hash chaining, verification and secret redaction.

``hash = sha256(prev_hash ‖ canonical(event))``: editing, removing, inserting or
reordering any event breaks every hash after it, and the store's separately kept head
catches events removed from the end.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from pydantic import BaseModel, JsonValue

from bot.errors import AuditChainBroken
from bot.models import AuditEvent, canonical_json, sha256_hex

if TYPE_CHECKING:
    from bot.store import Store

GENESIS_HASH = ""
MASK = "***"
SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[_-]?key|auth(orization)?|credential|private[_-]?key"
    r"|cookie|session",
    re.IGNORECASE,
)

# Every SECRET_KEY match contains one of these: a cheap first test before the regex.
SECRET_KEY_HINTS = ("pass", "secret", "token", "key", "auth", "credential", "cookie", "session")

log = structlog.get_logger("lam.audit")

ModelT = TypeVar("ModelT", bound=BaseModel)


def chain_hash(prev_hash: str, event: AuditEvent) -> str:
    return sha256_hex(prev_hash + canonical_json(event.body()))


def seal(event: AuditEvent, seq: int, prev_hash: str) -> AuditEvent:
    """The event as it is appended: numbered and chained to the one before it."""
    numbered = event.model_copy(update={"seq": seq, "prev_hash": prev_hash})
    return numbered.model_copy(update={"hash": chain_hash(prev_hash, numbered)})


async def verify(
    events: AsyncIterator[AuditEvent],
    head: tuple[int, str],
    *,
    start: tuple[int, str] = (0, GENESIS_HASH),
    head_after: Callable[[], Awaitable[tuple[int, str]]] | None = None,
) -> int:
    """Check the chain against the store's head; return the number of events checked.

    ``head`` is read before ``events``. ``start`` is the store's checkpoint, the
    ``(seq, hash)`` of the last event retention removed: the chain must go on from it.
    On a store that is being written to, events can arrive while the chain is read:
    ``head_after`` reads the head again at the end, and events up to that head are
    legitimate. Events past every head were not written by LAM. Raises
    ``AuditChainBroken`` naming the first event that does not verify.
    """
    start_seq, prev_hash = start
    if start_seq > head[0]:
        raise AuditChainBroken(
            start_seq, f"the checkpoint is event {start_seq}, past the recorded head {head[0]}"
        )
    expected_seq = start_seq + 1
    async for event in events:
        if event.seq != expected_seq:
            raise AuditChainBroken(
                event.seq,
                f"expected event {expected_seq} here (an event was removed, inserted or moved)",
            )
        if event.prev_hash != prev_hash:
            raise AuditChainBroken(event.seq, "does not link to the event before it")
        if chain_hash(prev_hash, event) != event.hash:
            raise AuditChainBroken(event.seq, "its content does not match its hash (edited)")
        prev_hash = event.hash
        expected_seq += 1
    last = expected_seq - 1

    head_seq, head_hash = head
    if last > head_seq and head_after is not None:
        head_seq, head_hash = await head_after()
    if last < head[0]:
        raise AuditChainBroken(
            last + 1,
            f"the chain ends at event {last} but the recorded head is event {head[0]}"
            " (events were removed from the end)",
        )
    if last > head_seq:
        raise AuditChainBroken(
            head_seq + 1, f"the recorded head is event {head_seq}: events were added after it"
        )
    if last == head_seq and prev_hash != head_hash:
        raise AuditChainBroken(last, "does not match the recorded head hash")
    return last - start_seq


async def verify_store(store: Store) -> int:
    """Verify a store's whole audit trail as ``lam audit verify`` does; see ``verify``.

    Retention may have removed the oldest events: the chain goes on from the checkpoint.
    """
    head = await store.audit_head()
    return await verify(
        store.audit_events(),
        head,
        start=await store.audit_checkpoint(),
        head_after=store.audit_head,
    )


class Redactor:
    """Masks secrets before anything is stored, logged, posted or sent to a model.

    Values under secret-looking keys are masked, and so is every occurrence of a
    configured secret value, wherever it appears.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def add(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted(
            {*self._secrets, *(s for s in secrets if len(s) >= 4)}, key=len, reverse=True
        )

    def text(self, value: str) -> str:
        for secret in self._secrets:
            value = value.replace(secret, MASK)
        return value

    def json(self, value: JsonValue) -> JsonValue:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.json(item) for item in value]
        if isinstance(value, dict):
            return {
                # Only text can be a credential; a count of tokens is not one.
                key: MASK
                if SECRET_KEY.search(key) and isinstance(value, str) and value
                else self.json(value)
                for key, value in value.items()
            }
        return value

    def model(self, model: ModelT) -> ModelT:
        """A copy of ``model`` with every secret masked; the same object when it has none."""
        # Most records hold no secret and no secret-looking key: one scan of their JSON
        # text proves it, without walking the structure.
        text = model.model_dump_json()
        lowered = text.lower()
        if not any(hint in lowered for hint in SECRET_KEY_HINTS) and not any(
            secret in text for secret in self._secrets
        ):
            return model
        dumped = model.model_dump(mode="json")
        masked = self.json(dumped)
        if masked == dumped:
            return model
        return type(model).model_validate(masked)

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """structlog processor: mask secrets in every log line."""
        for key, value in list(event_dict.items()):
            if SECRET_KEY.search(key) and isinstance(value, str | bytes) and value:
                event_dict[key] = MASK
            elif isinstance(value, str):
                event_dict[key] = self.text(value)
        return event_dict


def log_event(event: AuditEvent) -> None:
    """Mirror an appended audit event into the structured log."""
    log.info(
        event.kind,
        seq=event.seq,
        request_id=event.request_id,
        actor=event.actor,
        state=event.state,
        plan_hash=event.plan_hash,
        reason=event.reason,
        step=event.step.step_id if event.step else None,
        step_status=event.step.status if event.step else None,
    )
