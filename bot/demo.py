"""``lam demo``: the whole governed flow, scripted, in a throw-away ``LAM_HOME``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from bot.config import Settings
from bot.console import render
from bot.models import Request
from bot.wiring import open_engine

# Harmless stand-ins for real operations: they only echo what they would do.
DEMO_CONFIG = """\
connectors:
  - type: shell
    name: shell
    settings:
      runbooks:
        restart_service:
          description: Restart a service (demo stand-in that only echoes).
          examples: ["restart {service}", "restart the {service} service"]
          argv: ["echo", "restarting service", "{service}"]
          params:
            service: {type: string, pattern: "[a-z][a-z0-9-]*", description: Service name}
          risk: write
          resource: service
          timeout: 10
        flush_cache:
          description: Flush a cache (demo stand-in that only echoes).
          examples: ["flush cache {cache}", "flush the {cache} cache"]
          argv: ["echo", "flushing cache", "{cache}"]
          params:
            cache: {type: string, pattern: "[a-z][a-z0-9-]*", description: Cache name}
          risk: destructive
          resource: cache
          timeout: 10
"""


async def run_demo(say: Callable[[str], None], *, keep: bool = False) -> None:
    """Run the scripted walk-through, printing each step as a person would see it."""
    home = Path(tempfile.mkdtemp(prefix="lam-demo-"))
    config = home / "lam.yaml"
    config.write_text(DEMO_CONFIG, encoding="utf-8")
    settings = Settings.model_validate({"LAM_HOME": str(home), "LAM_CONFIG": str(config)})
    engine = await open_engine(settings)
    try:
        say(f"LAM demo in a throw-away LAM_HOME: {home}\n")

        say("1. alice (developer) asks for disk usage in staging: policy lets it run outright.")
        record = await engine.ask(Request(text="disk usage in staging", requester="user:alice"))
        say(render(record) + "\n")

        say("2. alice asks to restart web in prod: developers may only request that.")
        record = await engine.ask(Request(text="restart web in prod", requester="user:alice"))
        say(render(record))
        say("   alice tries to approve her own request:")
        try:
            await engine.approve(record.id, "user:alice")
        except Exception as error:  # the refusal is what the demo shows
            say(f"   refused: {error}")
        say("   bob (sre-lead) approves it, so it runs:")
        say(render(await engine.approve(record.id, "user:bob")) + "\n")

        say("3. alice asks to flush the sessions cache in prod: a rule denies it.")
        record = await engine.ask(
            Request(text="flush cache sessions in prod", requester="user:alice")
        )
        say(render(record) + "\n")

        say("4. alice asks to restart api in prod; bob rejects it with a reason.")
        record = await engine.ask(Request(text="restart api in prod", requester="user:alice"))
        say(render(await engine.reject(record.id, "user:bob", "deploy freeze until Monday")))
        say("")

        say("5. The audit trail: every transition above, hash-chained.")
        count = await engine.verify_audit()
        say(f"   lam audit verify: chain intact, {count} events.")
    finally:
        await engine.aclose()
        if keep:
            say(f"\nKept {home}; try: LAM_HOME={home} LAM_CONFIG={config} lam history")
        else:
            shutil.rmtree(home, ignore_errors=True)
