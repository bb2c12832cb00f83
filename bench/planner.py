"""LAM's planning overhead around the model call, next to the bare ``openai`` round trip.

Both sides talk HTTP to the same scripted OpenAI-compatible server on loopback
(``tests/support/openai_server.py``), which answers at once with the same tool calls (two steps).

- LAM: what the engine does to plan one request: the actions the requester may use
  (``Policy.permitted_actions`` over the catalog, then ``Catalog.restricted``), then
  ``LLMPlanner.plan``: the tools (schemas cached per action), the redacted prompt with its
  data blocks, the model call, and reading the answer (tool names mapped back, JSON parsed,
  ``Params`` validated, steps and the plan built);
- baseline: ``client.chat.completions.create`` with the very messages and tools LAM sent,
  on a second client with the same options, so the payload, the HTTP round trip and the
  response parsing are the same.

The calls alternate, one of each per iteration, so both see the same conditions. The
catalog is the built-in shell actions plus ``--actions`` synthetic ones with typed
parameters, half of which policy grants to the requester. Also reported: building every
tool schema from scratch (the first plan of a process pays it once).

    python -m bench.planner [--plans 300] [--rounds 5] [--actions 40]

Reports medians over the rounds of each round's median per plan; never run as a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai
from pydantic import BaseModel, Field, create_model

from bot.audit import Redactor
from bot.logs import configure_logging
from bot.models import Intent
from bot.planning._prompt import ToolBuilder
from bot.planning.llm import LLMOptions, LLMPlanner
from bot.policy import Policy
from connectors import Action, ActionContext, ActionResult, Catalog, Params
from connectors.shell import ShellConnector, ShellSettings
from tests.support.openai_server import ScriptedOpenAI, tool_calls

REPO = Path(__file__).resolve().parent.parent
SECRETS = ["sk-bench-0000000000000000", "bench-db-password"]
TAIL = ("shell__tail_log", {"path": "/var/log/syslog", "lines": 20})
RESTART = ("svc0__restart", {"service": "web-1", "grace_seconds": 5, "drain": True})


async def never_run(params: BaseModel, ctx: ActionContext) -> ActionResult:
    raise AssertionError("planning never runs an action")


def synthetic_actions(count: int) -> list[Action]:
    """``count`` actions with a few typed parameters each, like real connectors declare."""
    params: Any = create_model(
        "RestartParams",
        __base__=Params,
        service=(str, Field(pattern=r"^[a-z][a-z0-9-]*$", description="The service.")),
        grace_seconds=(int, Field(default=30, ge=0, le=600, description="Drain time.")),
        drain=(bool, Field(default=True, description="Drain connections first.")),
    )
    return [
        Action(
            f"svc{n}.restart",
            f"Restart a service of fleet {n}.",
            params,
            never_run,
            risk="write",
            resource_param="service",
            examples=("restart {service}",),
        )
        for n in range(count)
    ]


def policy(directory: Path, actions: int) -> Policy:
    granted = "".join(
        f"p, role:bench, dev, svc{n}.*, *, run, allow\n" for n in range(0, actions, 2)
    )
    (directory / "model.conf").write_text((REPO / "policies" / "model.conf").read_text())
    (directory / "policy.csv").write_text(
        "g, user:bench, role:bench, *\np, role:bench, dev, shell.*, *, run, allow\n" + granted
    )
    return Policy.load(directory)


async def main(plans: int, rounds: int, actions: int) -> None:
    configure_logging(log_format="json", level="warning", redactor=Redactor())
    catalog = Catalog.of(
        [*Catalog([ShellConnector("shell", ShellSettings())]), *synthetic_actions(actions)]
    )
    intent = Intent(
        goal="show the last 20 lines of the syslog and restart web-1 gently",
        environment="dev",
        environment_source="default",
        dry_run=False,
        requester="user:bench",
    )
    # The model's answer: two steps, or one when there is no synthetic action to restart.
    reply = tool_calls(TAIL, RESTART) if actions else tool_calls(TAIL)
    steps = 2 if actions else 1
    with tempfile.TemporaryDirectory(prefix="lam-bench-") as tmp:
        rules = policy(Path(tmp), actions)
    async with ScriptedOpenAI.running() as server:
        options = LLMOptions(
            model="bench", base_url=server.base_url, api_key=SECRETS[0], max_retries=0
        )
        planner = LLMPlanner(options, redactor=Redactor(SECRETS))
        bare = openai.AsyncOpenAI(base_url=server.base_url, api_key=SECRETS[0], max_retries=0)

        async def lam_plan() -> None:
            ids = rules.permitted_actions(
                intent.requester, intent.environment, (a.id for a in catalog)
            )
            plan = await planner.plan(intent, catalog.restricted(ids))
            assert len(plan.steps) == steps

        # One warm-up plan fills the schema cache and gives the exact payload LAM sends.
        server.enqueue(reply)
        await lam_plan()
        sent = server.requests[0].body
        offered = len(sent["tools"])

        async def bare_call() -> None:
            completion = await bare.chat.completions.create(
                model=sent["model"],
                messages=sent["messages"],
                tools=sent["tools"],
                tool_choice="auto",
            )
            assert completion.choices[0].message.tool_calls

        lam_medians: list[float] = []
        bare_medians: list[float] = []
        filter_medians: list[float] = []
        for round_number in range(rounds):
            server.requests.clear()
            server.enqueue(*(reply for _ in range(2 * plans)))
            lam_times: list[float] = []
            bare_times: list[float] = []
            for _ in range(plans):
                for work, times in ((lam_plan, lam_times), (bare_call, bare_times)):
                    start = time.perf_counter()
                    await work()
                    times.append(time.perf_counter() - start)
            lam_medians.append(statistics.median(lam_times))
            bare_medians.append(statistics.median(bare_times))
            filter_times: list[float] = []
            for _ in range(plans):
                start = time.perf_counter()
                ids = rules.permitted_actions(
                    intent.requester, intent.environment, (a.id for a in catalog)
                )
                catalog.restricted(ids)
                filter_times.append(time.perf_counter() - start)
            filter_medians.append(statistics.median(filter_times))
            print(f"round {round_number + 1}/{rounds} done", file=sys.stderr)
        server.assert_done()
        await planner.aclose()
        await bare.close()

    cold: list[float] = []
    for _ in range(max(3, rounds)):
        start = time.perf_counter()
        ToolBuilder(Redactor(SECRETS).text).toolset(catalog)
        cold.append(time.perf_counter() - start)

    lam, baseline = statistics.median(lam_medians), statistics.median(bare_medians)
    print(
        f"plans per round: {plans}, rounds: {rounds}; catalog: {len(catalog)} actions,"
        f" {offered - 1} offered to the requester (+ clarify); medians below"
    )
    print(f"bare openai round trip:  {baseline * 1e6:8.0f} µs/call")
    print(f"LAM plan (same server):  {lam * 1e6:8.0f} µs/plan")
    print(
        f"LAM overhead per plan:   {(lam - baseline) * 1e6:8.0f} µs"
        f" ({lam / baseline:.2f}x the bare round trip)"
    )
    print(
        f"  of which policy filtering: {statistics.median(filter_medians) * 1e6:.0f} µs"
        " (Policy.permitted_actions + Catalog.restricted, alone)"
    )
    print(
        f"tool schemas from scratch ({len(catalog)} actions, once per process):"
        f" {statistics.median(cold) * 1e6:.0f} µs"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--actions", type=int, default=40)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.plans, arguments.rounds, arguments.actions))
