"""The LLM planner: an OpenAI-compatible model proposes steps as tool calls.

The model sees as tools exactly the actions of the catalog it is given (the engine gives
it only those the requester may run or request) and ``clarify``. Each tool call it makes
becomes one proposed step, validated like any other: a call to a tool it was not offered,
arguments that are not JSON, or arguments its ``Params`` refuse are sent back to it with
the precise error, a bounded number of times, and then planning stops with ``NoPlan``. A
hallucinated action never reaches policy. The environment, the resource and the risk of a
step come from LAM (the intent and the action), never from the model.

Every text sent to the model passes through the ``Redactor``; what a person or a tool
wrote reaches it only as labelled data (``bot.planning._prompt``). Timeouts, 429 and 5xx
answers are retried with backoff by the ``openai`` client (``max_retries``); what still
fails becomes ``ModelUnavailable``, a ``NoPlan`` with a sentence for the user.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import openai
import structlog
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolMessageParam,
)

from bot import metrics
from bot.audit import Redactor
from bot.errors import InvalidInput, LamError, NoPlan
from bot.models import Intent, Plan, Step
from bot.planning import _prompt
from bot.planning._usage import PlanningUsage, Tally, UsageMeter, metered, record
from bot.planning.aliases import suggestions
from bot.planning.references import check_references, validate_arguments
from connectors import Catalog

__all__ = [
    "ClarificationNeeded",
    "LLMOptions",
    "LLMPlanner",
    "ModelUnavailable",
    "PlanningUsage",
    "UsageMeter",
    "metered",
]

log = structlog.get_logger("lam.planning.llm")

MAX_ECHO = 300
"""Characters of the model's own text (or an API error) quoted back to the user."""


@dataclass(frozen=True)
class LLMOptions:
    """How to reach the model and how much one planning request may cost."""

    model: str
    base_url: str | None = None
    """An OpenAI-compatible API, e.g. ``http://127.0.0.1:11434/v1``; ``None``: OpenAI's."""
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    """Seconds one model call may take, per attempt."""
    max_retries: int = 2
    """Retries of a call that timed out or got 408/409/429/5xx, with the client's backoff."""
    max_repairs: int = 2
    """Times a refused proposal is sent back to the model with the error before giving up."""
    token_budget: int = 20_000
    """Tokens (prompt and completion, every call) one ``plan`` or ``revise`` may use."""
    max_steps: int = 20
    """Steps one plan may have; a longer proposal is refused like invalid arguments."""


class ClarificationNeeded(LamError):
    """The model needs an answer from the person before it can propose a plan."""

    def __init__(self, question: str) -> None:
        super().__init__(f"LAM needs to know more before planning: {question}")
        self.question = question
        """The question to put to the person, as the model wrote it (redacted, capped)."""


class ModelUnavailable(NoPlan):
    """The model could not be asked (timeouts, rate limits, errors after the retries)."""


Refusals = dict[int, str]
"""The tool calls LAM refused, by position in the model's answer, with the error it is shown."""


class LLMPlanner:
    """Plans with an OpenAI-compatible model; proposes only, like every planner."""

    name = "llm"

    def __init__(
        self,
        options: LLMOptions,
        *,
        redactor: Redactor,
        client: openai.AsyncOpenAI | None = None,
    ) -> None:
        self.options = options
        self.redactor = redactor
        self._client = client or openai.AsyncOpenAI(
            base_url=options.base_url,
            # A local OpenAI-compatible server needs no key, but the client insists on one.
            api_key=options.api_key or "lam-no-api-key",
            timeout=options.timeout,
            max_retries=options.max_retries,
        )
        self._tools = _prompt.ToolBuilder(redactor.text)
        self._where = f"the model API at {self._client.base_url}"

    async def plan(self, intent: Intent, catalog: Catalog, *, history: Sequence[str] = ()) -> Plan:
        """A plan for ``intent`` from ``catalog``'s actions, proposed by the model.

        ``history`` is earlier messages of the thread, and ``intent.conversation`` the
        answers to earlier questions; both are shown to the model as data. Raises
        ``ClarificationNeeded`` when the model asks a question, ``NoPlan`` when it
        proposes nothing usable within the repairs and the token budget, and
        ``ModelUnavailable`` when it cannot be asked.
        """
        nonce = _prompt.new_nonce()
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": self._redact(_prompt.system_prompt(intent))},
            {
                "role": "user",
                "content": self._redact(_prompt.request_prompt(intent, history, nonce)),
            },
        ]
        return await self._converse(intent, catalog, messages)

    async def revise(
        self,
        intent: Intent,
        catalog: Catalog,
        plan: Plan,
        failure: str,
        *,
        succeeded: Sequence[str] = (),
    ) -> Plan:
        """A revised plan after a step of ``plan`` failed with ``failure``.

        The failure (a tool's output) and the previous plan are shown as data; the steps
        in ``succeeded`` are named as done. The new plan is a proposal like any other:
        policy and approvals decide it again, and the caller bounds how often a request
        may be revised. Raises ``NoPlan`` when the model proposes no usable revision.
        """
        nonce = _prompt.new_nonce()
        prompt = _prompt.revision_prompt(intent, plan, failure, succeeded, nonce)
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": self._redact(_prompt.system_prompt(intent))},
            {"role": "user", "content": self._redact(prompt)},
        ]
        return await self._converse(intent, catalog, messages)

    async def aclose(self) -> None:
        await self._client.close()

    async def _converse(
        self, intent: Intent, catalog: Catalog, messages: list[ChatCompletionMessageParam]
    ) -> Plan:
        if not len(catalog):
            # Nothing to offer but a question: not worth a model call.
            raise NoPlan(
                f"{intent.requester} may not run or request any action in"
                f" {intent.environment!r}, so nothing was planned or run",
                [],
            )
        toolset = self._tools.toolset(catalog)
        tally = Tally(PlanningUsage(model=self.options.model))
        try:
            for repair in range(self.options.max_repairs + 1):
                completion = await self._complete(messages, toolset, tally)
                if not completion.choices:
                    raise NoPlan("the model answered with no message; nothing was run.", [])
                message = completion.choices[0].message
                outcome = self._read(message, intent, catalog, toolset)
                if isinstance(outcome, Plan):
                    return outcome
                if repair == self.options.max_repairs:
                    times = "once" if repair == 0 else f"{repair + 1} times"
                    raise NoPlan(
                        f"the model's proposal was refused {times}, so nothing was planned or"
                        " run; last problems: " + "; ".join(outcome.values()),
                        suggestions(intent.goal, catalog),
                    )
                messages += self._repair_messages(message, outcome)
                tally.usage = tally.usage.model_copy(update={"repairs": repair + 1})
            raise AssertionError("unreachable: the loop returns or raises")
        finally:
            usage = tally.usage
            record(usage)
            log.info(
                "planning.llm",
                model=usage.model,
                calls=usage.calls,
                repairs=usage.repairs,
                total_tokens=usage.total_tokens,
            )

    async def _complete(
        self,
        messages: list[ChatCompletionMessageParam],
        toolset: _prompt.Toolset,
        tally: Tally,
    ) -> ChatCompletion:
        """One model call; API failures become ``ModelUnavailable``, overspending ``NoPlan``."""
        where = self._where
        retries = self.options.max_retries
        try:
            with metrics.LLM_LATENCY.time():
                completion = await self._client.chat.completions.create(
                    model=self.options.model,
                    messages=messages,
                    tools=list(toolset.definitions),
                    tool_choice="auto",
                )
        except openai.APITimeoutError:
            raise self._unavailable(
                f"{where} did not answer within {self.options.timeout:g}s"
                f" ({retries} retries included)"
            ) from None
        except openai.APIConnectionError as error:
            raise self._unavailable(
                f"cannot reach {where} ({retries} retries included): {error}; check OPENAI_BASE_URL"
            ) from None
        except openai.RateLimitError:
            raise self._unavailable(
                f"{where} is rate limiting LAM (HTTP 429), still after {retries} retries"
            ) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
            raise self._unavailable(
                f"{where} refused LAM's credentials (HTTP {error.status_code}); check"
                " OPENAI_API_KEY"
            ) from None
        except openai.APIStatusError as error:
            after = f", still after {retries} retries" if error.status_code >= 500 else ""
            raise self._unavailable(
                f"{where} failed with HTTP {error.status_code}{after}: {self._quote(error.message)}"
            ) from None
        except openai.OpenAIError as error:
            raise self._unavailable(
                f"{where} gave an answer LAM cannot read ({type(error).__name__})"
            ) from None
        tally.add(completion, messages)
        used, budget = tally.usage.total_tokens, self.options.token_budget
        if used > budget:
            raise NoPlan(
                f"planning stopped: the model used {used} tokens, over this request's budget"
                f" of {budget}; nothing was planned or run. Ask for less at once, or name"
                " the action: 'run <action> key=value'",
                [],
            )
        return completion

    def _unavailable(self, problem: str) -> ModelUnavailable:
        log.warning("planning.model_unavailable", problem=problem)
        return ModelUnavailable(
            f"{problem}; nothing was planned or run. Try again later, or name the action:"
            " 'run <action> key=value'",
            [],
        )

    def _read(
        self,
        message: ChatCompletionMessage,
        intent: Intent,
        catalog: Catalog,
        toolset: _prompt.Toolset,
    ) -> Plan | Refusals:
        """The plan the tool calls propose, or the refusals to send back to the model.

        The n-th function call is step ``s<n>``, as the model was told. Calls of any other
        kind are ignored: no other kind is offered.
        """
        calls = _function_calls(message)
        if not calls:
            said = message.content or message.refusal or "(nothing)"
            raise NoPlan(
                f"the model proposed no action: {self._quote(said)}; nothing was run.",
                suggestions(intent.goal, catalog),
            )
        refusals: Refusals = {}
        steps: list[Step] = []
        for position, call in enumerate(calls):
            name, raw = call.function.name, call.function.arguments
            if name == _prompt.CLARIFY:
                question = _question(raw)
                if question is not None:
                    raise ClarificationNeeded(self._quote(question))
                refusals[position] = 'clarify takes {"question": "<one question>"}'
            elif position >= self.options.max_steps:
                refusals[position] = (
                    f"a plan may have at most {self.options.max_steps} steps; ask for the"
                    " rest in a later request"
                )
            else:
                try:
                    steps.append(self._step(name, raw, position + 1, intent, toolset))
                except InvalidInput as error:
                    refusals[position] = str(error)
        if refusals:
            return refusals
        return Plan(steps=tuple(steps), planner=f"llm:{self.options.model}", dry_run=intent.dry_run)

    def _step(
        self,
        name: str,
        raw: str,
        number: int,
        intent: Intent,
        toolset: _prompt.Toolset,
    ) -> Step:
        action = toolset.actions.get(name)
        if action is None:
            offered = [n for n in toolset.names if n != _prompt.CLARIFY]
            close = difflib.get_close_matches(name, offered, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidInput(
                f"unknown tool {name!r}: it is not one of the tools offered"
                f" ({', '.join(offered) or 'none'}){hint}"
            )
        try:
            args = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as error:
            raise InvalidInput(
                f"the arguments of {name!r} are not valid JSON: {error.msg} at character"
                f" {error.pos}; send a JSON object"
            ) from None
        if not isinstance(args, dict):
            raise InvalidInput(
                f"the arguments of {name!r} must be a JSON object, not {type(args).__name__}"
            )
        step_id = f"s{number}"
        earlier = [f"s{n}" for n in range(1, number)]
        referenced = check_references(step_id, args, earlier)
        checked, resource = validate_arguments(action, args)
        previous = earlier[-1:]
        return Step(
            id=step_id,
            action=action.id,
            args=checked,
            environment=intent.environment,
            resource=resource,
            risk=action.risk,
            depends_on=tuple(dict.fromkeys((*previous, *referenced))),
        )

    def _repair_messages(
        self, message: ChatCompletionMessage, refusals: Refusals
    ) -> list[ChatCompletionMessageParam]:
        """The model's answer as it gave it, and one tool result per call it made."""
        calls = _function_calls(message)
        echo: ChatCompletionMessageParam = {
            "role": "assistant",
            "content": self._redact(message.content) if message.content else None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": self._redact(call.function.arguments),
                    },
                }
                for call in calls
            ],
        }
        results: list[ChatCompletionMessageParam] = []
        for position, call in enumerate(calls):
            if position in refusals:
                text = (
                    f"REFUSED: {refusals[position]}\nNothing was planned. Call the tools again"
                    " with the complete corrected plan, every step in order."
                )
            else:
                text = "valid, but the plan is incomplete: repeat this call in the corrected plan."
            result: ChatCompletionToolMessageParam = {
                "role": "tool",
                "tool_call_id": call.id,
                "content": self._redact(text),
            }
            results.append(result)
        return [echo, *results]

    def _redact(self, text: str) -> str:
        return self.redactor.text(text)

    def _quote(self, text: str) -> str:
        """Model or API text, as it may be shown to a person: redacted and capped."""
        text = self._redact(" ".join(text.split()))
        return text if len(text) <= MAX_ECHO else text[: MAX_ECHO - 1] + "…"


def _function_calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    return [
        call
        for call in message.tool_calls or []
        if isinstance(call, ChatCompletionMessageFunctionToolCall)
    ]


def _question(raw: str) -> str | None:
    try:
        args = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if isinstance(args, dict) and isinstance(args.get("question"), str) and args["question"]:
        question: str = args["question"]
        return question
    return None
