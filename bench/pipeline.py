"""Requests per second through the whole engine, next to the raw SQLite commit it does.

The engine runs its real layers: intent, the offline planner, Casbin policy, execution of
a no-op action that policy allows outright, and the embedded store with its hash-chained
audit trail. The baseline, measured in the same run on the same kind of file, is the raw
write transaction the store performs for one transition (BEGIN IMMEDIATE, update the
request, append an audit row, move the head, COMMIT) with the same pragmas.

    python bench/pipeline.py [--requests 200] [--rounds 5]

Reports medians over the rounds; never run as a test.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from bot.audit import Redactor
from bot.engine import Engine, EngineOptions
from bot.logs import configure_logging
from bot.models import Request, RequestRecord
from bot.planning.aliases import AliasPlanner
from bot.policy import Policy
from bot.store import Store
from bot.store.sqlite import SqliteStore
from connectors import Action, ActionContext, ActionResult, Catalog, Params

REPO = Path(__file__).resolve().parent.parent
POLICY = "g, user:bench, role:bench, *\np, role:bench, *, bench.noop, *, run, allow\n"


class NoParams(Params):
    pass


async def noop(params: BaseModel, ctx: ActionContext) -> ActionResult:
    return ActionResult(output="ok")


def bench_engine(directory: Path, store: Store) -> Engine:
    """An engine on ``store`` whose one action, a no-op, policy lets run outright."""
    policy_dir = directory / "policies"
    policy_dir.mkdir()
    (policy_dir / "model.conf").write_text((REPO / "policies" / "model.conf").read_text())
    (policy_dir / "policy.csv").write_text(POLICY)
    return Engine(
        store=store,
        policy=Policy.load(policy_dir),
        catalog=Catalog.of([Action("bench.noop", "No-op.", NoParams, noop, examples=("noop",))]),
        planner=AliasPlanner(),
        options=EngineOptions(),
    )


async def timed_requests(engine: Engine, requests: int) -> tuple[float, RequestRecord]:
    """Seconds for ``requests`` requests end to end, and the last request as stored."""
    started = time.perf_counter()
    for _ in range(requests):
        record = await engine.ask(Request(text="noop in staging", requester="user:bench"))
        assert record.state == "succeeded", record.reason
    return time.perf_counter() - started, record


async def engine_round(directory: Path, requests: int) -> tuple[float, int]:
    """Seconds for ``requests`` requests end to end, and the store commits they made."""
    store = await SqliteStore.open(directory / "lam.db")
    try:
        elapsed, last = await timed_requests(bench_engine(directory, store), requests)
    finally:
        await store.aclose()
    return elapsed, last.version


async def raw_commit_round(directory: Path, commits: int) -> float:
    """Seconds for ``commits`` raw write transactions shaped like one store transition."""
    store = await SqliteStore.open(directory / "raw.db")  # same schema and pragmas
    await store.aclose()
    db = sqlite3.connect(directory / "raw.db", isolation_level=None)
    db.execute("PRAGMA busy_timeout = 5000")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("INSERT INTO requests VALUES ('r', 'user:bench', 'received', 0, 'now', 'now', '{}')")
    payload = "x" * 1500  # about the size of one stored record
    try:
        started = time.perf_counter()
        for seq in range(1, commits + 1):
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE requests SET version = ?, record = ? WHERE id = 'r'", (seq, payload))
            db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            db.execute(
                "INSERT INTO audit VALUES (?, 'r', 'k', 'now', 'p', 'h', ?)", (seq, payload[:600])
            )
            db.execute("UPDATE audit_head SET seq = ?, hash = 'h' WHERE id = 1", (seq,))
            db.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        db.close()


async def main(requests: int, rounds: int) -> None:
    # As the CLI runs by default: warnings only, so the figures are not about printing.
    configure_logging(log_format="json", level="warning", redactor=Redactor())
    engine_seconds: list[float] = []
    raw_seconds: list[float] = []
    commits_per_request = 0
    for round_number in range(rounds):
        with tempfile.TemporaryDirectory(prefix="lam-bench-") as tmp:
            (Path(tmp) / "e").mkdir()
            (Path(tmp) / "r").mkdir()
            elapsed, commits_per_request = await engine_round(Path(tmp) / "e", requests)
            engine_seconds.append(elapsed)
            raw_seconds.append(
                await raw_commit_round(Path(tmp) / "r", requests * commits_per_request)
            )
        print(f"round {round_number + 1}/{rounds} done", file=sys.stderr)

    per_request = statistics.median(engine_seconds) / requests
    per_commit = statistics.median(raw_seconds) / (requests * commits_per_request)
    commit_cost = per_commit * commits_per_request
    print(f"requests per round: {requests}, rounds: {rounds} (medians below)")
    print(f"engine:      {1 / per_request:9.1f} requests/s   {per_request * 1e6:9.0f} µs/request")
    print(f"raw commit:  {1 / per_commit:9.1f} commits/s    {per_commit * 1e6:9.0f} µs/commit")
    print(f"store transactions per request: {commits_per_request}")
    print(
        f"per-request overhead beyond its raw commits: {(per_request - commit_cost) * 1e6:.0f} µs"
        f" ({per_request / commit_cost:.2f}x the raw commit cost of a request)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.requests, arguments.rounds))
