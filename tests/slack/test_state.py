"""What the front keeps in the store: follow-ups posted once, and an older state file moved in."""

from __future__ import annotations

import json
from pathlib import Path

from bot.slack._state import PlanMessage, SlackState, migrate
from bot.store.sqlite import SqliteStore
from tests.support.slack import TEAM_ID


async def test_each_follow_up_is_posted_once(store: SqliteStore) -> None:
    """Only the first call for a request's results says post; the next ones, anywhere, do not."""
    one, other = SlackState(store, TEAM_ID), SlackState(store, TEAM_ID)
    assert await one.first_to_post("r1", "results")
    assert not await one.first_to_post("r1", "results")
    assert not await other.first_to_post("r1", "results")
    assert await other.first_to_post("r1", "notified")
    assert await other.first_to_post("r2", "results")


async def test_threads_and_plans_are_shared_through_the_store(store: SqliteStore) -> None:
    """A plan and a thread remembered by one replica are found by another."""
    one, other = SlackState(store, TEAM_ID), SlackState(store, TEAM_ID)
    plan = PlanMessage(channel="C0OPS", ts="2.000001", thread_ts="1.000001")
    await one.remember_plan("r1", plan)
    await one.remember_thread("C0OPS", "1.000001", "r1")
    assert await other.plan_of("r1") == plan
    assert await other.request_in_thread("C0OPS", "1.000001") == "r1"
    assert await other.request_in_thread("C0OPS", "1.000002") is None
    assert await other.plan_of("r2") is None


async def test_an_older_state_file_is_moved_into_the_store(
    store: SqliteStore, tmp_path: Path
) -> None:
    """The audit position, plans, threads and posted marks of slack-state.json move in once."""
    path = tmp_path / "slack-state.json"
    legacy = {
        "audit_seq": 41,
        "plans": {
            "r1": {"channel": "C0OPS", "ts": "2.000001", "thread_ts": "1.000001"},
            "r2": {"channel": "C0PROD", "ts": "3.000001", "posted": ["notified"]},
        },
        "threads": ["C0OPS/1.000001", "C0PROD/3.000001"],
    }
    path.write_text(json.dumps(legacy), encoding="utf-8")
    state = SlackState(store, TEAM_ID)
    await migrate(path, state, "C0AUDIT")
    assert await state.audit_position("C0AUDIT") == 41
    assert await state.plan_of("r2") == PlanMessage(channel="C0PROD", ts="3.000001")
    assert await state.request_in_thread("C0OPS", "1.000001") == "r1"
    assert await state.request_in_thread("C0PROD", "3.000001") == "r2"
    assert not await state.first_to_post("r2", "notified")
    assert await state.first_to_post("r1", "notified")
    assert not path.exists() and path.with_name("slack-state.json.migrated").exists()
    # Nothing is moved twice, and what the store has is kept.
    await state.set_audit_position("C0AUDIT", 50)
    path.write_text(json.dumps(legacy), encoding="utf-8")
    await migrate(path, state, "C0AUDIT")
    assert await state.audit_position("C0AUDIT") == 50


async def test_an_unreadable_state_file_is_left_alone(store: SqliteStore, tmp_path: Path) -> None:
    """A state file that is not LAM's JSON changes nothing and stays where it is."""
    path = tmp_path / "slack-state.json"
    path.write_text("{not json", encoding="utf-8")
    state = SlackState(store, TEAM_ID)
    await migrate(path, state, "C0AUDIT")
    assert path.exists()
    assert await state.audit_position("C0AUDIT") == 0
