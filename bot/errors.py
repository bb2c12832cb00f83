"""Every outcome LAM reports instead of crashing, in one place.

Each error's message is a complete sentence for the person who asked: it names the
thing, the value, and what to do.
"""

from __future__ import annotations


class LamError(Exception):
    """Base of every error LAM reports to a user; the CLI exits non-zero with its message."""

    exit_code = 1


class ConfigError(LamError):
    """A setting, ``lam.yaml`` or a policy file is invalid; start-up stops."""

    exit_code = 2


class InvalidInput(LamError):
    """Text or an argument was refused before anything was planned or run."""

    exit_code = 2


class UnknownAction(InvalidInput):
    def __init__(self, action: str, suggestions: list[str]) -> None:
        hint = f"; did you mean {suggestions[0]!r}?" if suggestions else "; see 'lam actions'"
        super().__init__(f"unknown action {action!r}{hint}")
        self.action = action
        self.suggestions = suggestions


class InvalidArguments(InvalidInput):
    def __init__(self, action: str, problems: list[str]) -> None:
        super().__init__(f"invalid arguments for {action!r}: " + "; ".join(problems))
        self.action = action
        self.problems = problems


class NoPlan(LamError):
    """The planner found no action for the request; nothing was guessed or run."""

    def __init__(self, message: str, suggestions: list[str]) -> None:
        super().__init__(message)
        self.suggestions = suggestions


class UnknownRequest(LamError):
    def __init__(self, request_id: str) -> None:
        super().__init__(f"no request with id {request_id!r}; see 'lam history'")
        self.request_id = request_id


class DuplicateRequest(LamError):
    """The request was delivered before (same dedupe key): nothing was stored, audited or run."""

    def __init__(self, dedupe_key: str, request_id: str) -> None:
        super().__init__(
            f"{dedupe_key!r} was received already and is request {request_id!r}; this"
            f" copy was dropped; see 'lam show {request_id}'"
        )
        self.dedupe_key = dedupe_key
        self.request_id = request_id
        """The request that owns the key: the first delivery."""


class IllegalTransition(LamError):
    """The request is not in a state that allows what was asked; nothing changed."""


class ConcurrentUpdate(LamError):
    """Another writer changed the request first; re-read it and decide again."""


class StoreUnavailable(LamError):
    """The store cannot be reached or kept a change from going through; nothing ran.

    LAM fails closed: no action runs without its audit entry, so while the store is
    down nothing runs at all.
    """


class PolicyDenied(LamError):
    """Policy does not let this subject do this."""


class ApprovalRequired(LamError):
    """The step may run only after the approvals its policy rule asks for."""


class ActionFailed(LamError):
    """A connector reports that an action did not succeed; ``retryable`` invites a retry."""

    retryable = False


class RetryableError(ActionFailed):
    """A transient failure (a timeout, a busy service) worth retrying with backoff."""

    retryable = True


class SandboxUnavailable(ActionFailed):
    """The sandbox is required but cannot be used here; the action was not run."""


class AuditChainBroken(LamError):
    """The audit trail does not verify: an event was edited, removed, added or moved."""

    def __init__(self, seq: int, problem: str) -> None:
        super().__init__(f"audit chain broken at event {seq}: {problem}")
        self.seq = seq
        self.problem = problem
