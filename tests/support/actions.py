"""A connector of test actions whose behaviour each test controls."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from typing import ClassVar

from pydantic import BaseModel, Field

from bot.errors import ActionFailed, RetryableError
from connectors import Action, ActionContext, ActionResult, Params


class NoParams(Params):
    pass


class EchoParams(Params):
    text: str = Field(description="What to echo back.")


class ServiceParams(Params):
    service: str = Field(pattern=r"^[a-z][a-z0-9-]*$", description="Service name.")


class FlakyParams(Params):
    failures: int = Field(ge=0, description="How many attempts fail before one succeeds.")


class OutputParams(Params):
    size: int = Field(ge=0, description="Bytes of output to produce.")


class ScriptedSettings(BaseModel):
    pass


class ScriptedConnector:
    """Actions for engine tests: every call is counted in ``calls`` by action id."""

    type_name: ClassVar[str] = "test"
    Settings: ClassVar[type[BaseModel]] = ScriptedSettings

    def __init__(self, name: str = "test", settings: ScriptedSettings | None = None) -> None:
        self.name = name
        self.calls: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.release = asyncio.Event()

    async def start(self, changed: Callable[[], None]) -> None:
        pass

    def actions(self) -> Sequence[Action]:
        n = self.name
        return (
            Action(f"{n}.noop", "Do nothing.", NoParams, self._noop, examples=("noop",)),
            Action(
                f"{n}.echo",
                "Echo text back.",
                EchoParams,
                self._echo,
                examples=("echo {text}", "say {text}"),
                supports_dry_run=True,
            ),
            Action(
                f"{n}.restart",
                "Restart a service.",
                ServiceParams,
                self._restart,
                risk="write",
                resource_param="service",
                examples=("restart {service}", "restart the {service} service"),
            ),
            Action(
                f"{n}.purge",
                "Purge a service's data.",
                ServiceParams,
                self._restart,
                risk="destructive",
                resource_param="service",
                examples=("purge {service}",),
            ),
            Action(f"{n}.flaky", "Fail a few times, then succeed.", FlakyParams, self._flaky),
            Action(f"{n}.fail", "Always fail.", NoParams, self._fail, examples=("break",)),
            Action(
                f"{n}.hang",
                "Wait until released.",
                NoParams,
                self._hang,
                timeout=0.2,
                examples=("hang",),
            ),
            Action(f"{n}.crash", "Raise a bug.", NoParams, self._crash),
            Action(f"{n}.output", "Print a lot.", OutputParams, self._output),
        )

    async def aclose(self) -> None:
        pass

    async def _noop(self, params: BaseModel, ctx: ActionContext) -> ActionResult:
        self.calls[f"{self.name}.noop"] += 1
        return ActionResult(output="nothing done")

    async def _echo(self, params: BaseModel, ctx: ActionContext) -> ActionResult:
        assert isinstance(params, EchoParams)
        self.calls[f"{self.name}.echo"] += 1
        prefix = "would echo: " if ctx.dry_run else ""
        return ActionResult(output=prefix + params.text)

    async def _restart(self, params: BaseModel, ctx: ActionContext) -> ActionResult:
        assert isinstance(params, ServiceParams)
        self.calls[f"{self.name}.restart"] += 1
        return ActionResult(output=f"restarted {params.service} in {ctx.environment}")

    async def _flaky(self, params: BaseModel, ctx: ActionContext) -> ActionResult:
        assert isinstance(params, FlakyParams)
        self.attempts[ctx.idempotency_key] += 1
        self.calls[f"{self.name}.flaky"] += 1
        if self.attempts[ctx.idempotency_key] <= params.failures:
            raise RetryableError("service busy")
        return ActionResult(output=f"ok after {self.attempts[ctx.idempotency_key]} attempts")

    async def _fail(self, params: BaseModel, ctx: ActionContext) -> ActionResult:
        self.calls[f"{self.name}.fail"] += 1
        raise ActionFailed("the service refused: 503 maintenance")

    async def _hang(self, params: BaseModel, ctx: ActionContext) -> ActionResult:
        self.calls[f"{self.name}.hang"] += 1
        await self.release.wait()
        return ActionResult(output="released")

    async def _crash(self, params: BaseModel, ctx: ActionContext) -> ActionResult:
        self.calls[f"{self.name}.crash"] += 1
        raise ZeroDivisionError("division by zero")

    async def _output(self, params: BaseModel, ctx: ActionContext) -> ActionResult:
        assert isinstance(params, OutputParams)
        self.calls[f"{self.name}.output"] += 1
        return ActionResult(output="é" * (params.size // 2))


def action_context(*, dry_run: bool = False, timeout: float = 30.0) -> ActionContext:
    """The context the executor would pass for step s1 of request r1."""
    return ActionContext(
        request_id="r1",
        step_id="s1",
        environment="dev",
        dry_run=dry_run,
        idempotency_key="r1:s1",
        timeout=timeout,
    )
