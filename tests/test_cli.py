"""The ``lam`` command, run as a real subprocess against a temporary LAM_HOME."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path

import pytest

from bot.demo import DEMO_CONFIG
from tests.support.openai_server import ScriptedOpenAI, tool_calls

REPO = Path(__file__).resolve().parent.parent
LAM = [sys.executable, "-m", "bot.cli"]

Lam = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "lam.yaml").write_text(DEMO_CONFIG, encoding="utf-8")
    return home


@pytest.fixture
def lam(home: Path) -> Lam:
    """Run ``lam`` with its own LAM_HOME, the demo's runbooks and the shipped policy."""

    def run(
        *args: str, env: dict[str, str] | None = None, stdin: str = ""
    ) -> subprocess.CompletedProcess[str]:
        environment = {
            "PATH": os.environ["PATH"],
            "LAM_HOME": str(home),
            "LAM_CONFIG": str(home / "lam.yaml"),
            "LAM_POLICY_DIR": str(REPO / "policies"),
            **(env or {}),
        }
        return subprocess.run(
            [*LAM, *args],
            capture_output=True,
            text=True,
            env=environment,
            input=stdin,
            timeout=60,
            cwd=REPO,
        )

    return run


def as_json(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.stdout, result.stderr
    value = json.loads(result.stdout)
    assert isinstance(value, dict)
    return value


def test_ask_runs_an_allowed_request_and_prints_json(lam: Lam) -> None:
    """An allowed request runs at once; --json carries id, state and each step's fields."""
    result = lam("ask", "uptime in staging", "--as", "alice", "--json")
    assert result.returncode == 0, result.stderr
    record = as_json(result)
    assert record["state"] == "succeeded"
    (step,) = record["steps"]  # type: ignore[misc]
    assert step["action"] == "shell.uptime"
    assert (step["decision"], step["status"]) == ("allow", "succeeded")
    assert "load average" in step["output"]
    assert isinstance(record["id"], str)


def test_ask_then_approve_in_separate_processes(lam: Lam) -> None:
    """State persists: a request asked in one process is approved and run in another."""
    asked = as_json(lam("ask", "restart web in prod", "--as", "alice", "--json"))
    assert asked["state"] == "awaiting_approval"
    assert asked["steps"][0]["decision"] == "needs_approval"  # type: ignore[index]

    own = lam("approve", str(asked["id"]), "--as", "alice")
    assert own.returncode != 0
    assert "someone else must approve it" in own.stderr

    approved = lam("approve", str(asked["id"]), "--as", "bob", "--json")
    assert approved.returncode == 0, approved.stderr
    record = as_json(approved)
    assert record["state"] == "succeeded"
    assert record["steps"][0]["output"].strip() == "restarting service web"  # type: ignore[index]

    again = lam("approve", str(asked["id"]), "--as", "erin")
    assert again.returncode == 1
    assert again.stderr.strip().endswith("not awaiting approval; nothing changed")


def test_denied_request_exits_non_zero_with_the_rule(lam: Lam) -> None:
    """A denied request exits 3 with one error line naming the deny rule."""
    result = lam("ask", "flush cache sessions in prod", "--as", "alice")
    assert result.returncode == 3
    (line,) = result.stderr.strip().splitlines()
    assert "denied by policy" in line
    assert "p, role:developer, prod, shell.flush_cache, *, *, deny" in line


def test_reject_with_reason_and_cancel(lam: Lam) -> None:
    """A rejection carries its reason; a cancelled request cannot be approved afterwards."""
    first = as_json(lam("ask", "restart web in prod", "--as", "alice", "--json"))
    missing = lam("reject", str(first["id"]), "--as", "bob")
    assert missing.returncode == 2
    assert "--reason" in missing.stderr
    rejected = as_json(
        lam("reject", str(first["id"]), "--as", "bob", "--reason", "freeze", "--json")
    )
    assert (rejected["state"], rejected["approvals"][0]["reason"]) == ("rejected", "freeze")  # type: ignore[index]

    second = as_json(lam("ask", "restart api in prod", "--as", "alice", "--json"))
    assert as_json(lam("cancel", str(second["id"]), "--as", "alice", "--json"))["state"] == (
        "cancelled"
    )
    late = lam("approve", str(second["id"]), "--as", "bob")
    assert late.returncode == 1
    assert "cancelled, not awaiting approval" in late.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ("ask", "run shell.restrat service=web", "--as", "alice"),
            2,
            "did you mean 'shell.restart_service'?",
        ),
        (
            ("ask", "restart Web! in staging", "--as", "alice"),
            2,
            "invalid arguments for 'shell.restart_service': service: must match the pattern",
        ),
        (("ask", "make me a sandwich", "--as", "alice"), 2, "nothing was run"),
        (("ask", "uptime", "--as", "ali\u200bce"), 2, "ZERO WIDTH SPACE"),
        (("ask", "uptime", "--as", "role:admin"), 2, "not a valid user name"),
        (("show", "nope"), 1, "no request with id 'nope'"),
        (("approve", "nope", "--as", "bob"), 1, "no request with id 'nope'"),
    ],
)
def test_bad_input_gets_one_clear_line_and_a_non_zero_exit(
    lam: Lam, args: tuple[str, ...], code: int, message: str
) -> None:
    """Unknown actions, bad arguments, hidden characters and unknown ids fail clearly."""
    result = lam(*args)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unplannable_request_lists_the_closest_actions(lam: Lam) -> None:
    """A request LAM cannot plan shows the closest actions with example phrasings."""
    result = lam("ask", "restart the database", "--as", "alice")
    assert result.returncode == 2
    assert "closest actions:" in result.stdout
    assert "shell.restart_service: e.g." in result.stdout


def test_history_show_and_actions(lam: Lam) -> None:
    """History lists a user's requests newest first; show and actions describe them."""
    first = as_json(lam("ask", "uptime in staging", "--as", "alice", "--json"))
    as_json(lam("ask", "uptime in staging", "--as", "carol", "--json"))
    history = json.loads(lam("history", "--user", "alice", "--json").stdout)
    assert [r["id"] for r in history] == [first["id"]]
    shown = lam("show", str(first["id"]))
    assert shown.returncode == 0
    assert "finished successfully" in shown.stdout
    actions = lam("actions")
    assert "shell.tail_log" in actions.stdout
    assert "e.g. 'restart {service}'" in actions.stdout


def test_policy_check_prints_decision_and_rule(lam: Lam) -> None:
    """policy check shows the decision, the rule that decided and who may approve."""
    result = lam("policy", "check", "alice", "prod", "shell.restart_service", "--resource", "web")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("needs_approval: p, role:developer, prod, shell.*, *, request")
    assert "approvers: role:sre-lead" in result.stdout
    decision = json.loads(lam("policy", "check", "dave", "prod", "shell.uptime", "--json").stdout)
    assert decision["decision"] == "deny"
    assert "default deny" in decision["rule"]


def test_policy_test_passes_on_the_shipped_policy_and_fails_on_a_mismatch(
    lam: Lam, tmp_path: Path
) -> None:
    """policy test exits 0 when every case holds and 1 naming the case that does not."""
    passed = lam("policy", "test")
    assert passed.returncode == 0, passed.stderr
    assert " 0 failed" in passed.stdout

    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    (policies / "tests" / "wrong.yaml").write_text(
        "- {subject: 'user:alice', environment: prod, action: shell.flush_cache,"
        " expect: allow, name: alice flushes prod}\n"
    )
    failed = lam("policy", "test", env={"LAM_POLICY_DIR": str(policies)})
    assert failed.returncode == 1
    assert "FAIL wrong.yaml: alice flushes prod: expected allow" in failed.stderr


def test_a_policy_file_that_does_not_parse_stops_with_file_and_line(
    lam: Lam, tmp_path: Path
) -> None:
    """A malformed policy.csv is refused with its path and line, and nothing is stored."""
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    with (policies / "policy.csv").open("a") as csv:
        csv.write("p, role:developer, prod, shell.*\n")
    result = lam("ask", "uptime", "--as", "alice", env={"LAM_POLICY_DIR": str(policies)})
    assert result.returncode == 2
    assert "policy.csv:" in result.stderr
    assert "a 'p' rule has 6 non-empty fields" in result.stderr


def test_invalid_config_names_the_setting(lam: Lam, home: Path) -> None:
    """A connector of unknown type is reported and the others work; a bad setting stops LAM."""
    (home / "bad.yaml").write_text(
        "connectors:\n  - {type: telnet, name: old}\n  - {type: shell, name: shell}\n"
    )
    result = lam("actions", env={"LAM_CONFIG": str(home / "bad.yaml")})
    assert result.returncode == 0
    assert "unavailable: connector 'old' has unknown type 'telnet'" in result.stdout
    assert "shell.uptime" in result.stdout
    bad_env = lam("ask", "uptime", "--as", "alice", env={"LAM_APPROVAL_TTL_SECONDS": "soon"})
    assert bad_env.returncode == 2
    assert "LAM_APPROVAL_TTL_SECONDS" in bad_env.stderr


def test_required_sandbox_without_bwrap_refuses_to_run(lam: Lam, home: Path) -> None:
    """With the sandbox required and bwrap missing, the step fails and nothing runs."""
    (home / "strict.yaml").write_text(
        "connectors:\n  - type: shell\n    name: shell\n    settings:\n"
        "      sandbox: required\n      bwrap_path: /nonexistent/bwrap\n"
    )
    result = lam(
        "ask",
        "uptime in staging",
        "--as",
        "alice",
        "--json",
        env={"LAM_CONFIG": str(home / "strict.yaml")},
    )
    assert result.returncode == 1
    record = as_json(result)
    assert record["state"] == "failed"
    assert "bwrap" in record["steps"][0]["error"]  # type: ignore[index]
    assert record["steps"][0]["output"] == ""  # type: ignore[index]


def test_a_runbook_that_times_out_fails_its_step(lam: Lam, home: Path) -> None:
    """A runbook past its timeout is killed and the request fails naming the timeout."""
    (home / "slow.yaml").write_text(
        "connectors:\n  - type: shell\n    name: shell\n    settings:\n      runbooks:\n"
        "        wait:\n          description: Wait.\n          examples: [wait]\n"
        "          argv: [sleep, '30']\n          timeout: 1\n"
    )
    policies = lam("policy", "check", "alice", "staging", "shell.wait")
    assert policies.stdout.startswith("deny")  # not granted by the sample policy
    result = lam(
        "ask",
        "run shell.wait in staging",
        "--as",
        "bob",
        "--json",
        env={"LAM_CONFIG": str(home / "slow.yaml")},
    )
    record = as_json(result)
    assert record["state"] == "failed", record
    assert "timed out" in record["steps"][0]["error"]  # type: ignore[index]


def test_audit_verify_and_tail(lam: Lam) -> None:
    """audit verify passes on an untouched chain and tail shows the latest events."""
    lam("ask", "uptime in staging", "--as", "alice")
    verified = lam("audit", "verify")
    assert verified.returncode == 0
    assert verified.stdout.strip() == "audit chain intact: 7 events"
    tail = lam("audit", "tail", "-n", "2").stdout.strip().splitlines()
    assert len(tail) == 2
    assert "request.succeeded" in tail[-1]


def tamper(home: Path, *statements: str) -> None:
    with closing(sqlite3.connect(home / "lam.db")) as db, db:
        for statement in statements:
            db.execute(statement)


@pytest.mark.parametrize(
    ("statements", "seq"),
    [
        (
            ["UPDATE audit SET event = replace(event, 'user:alice', 'user:mallory') WHERE seq = 1"],
            1,
        ),
        (["DELETE FROM audit WHERE seq = 3"], 4),
        (
            [
                "UPDATE audit SET seq = -1 WHERE seq = 2",
                "UPDATE audit SET seq = 2 WHERE seq = 3",
                "UPDATE audit SET seq = 3 WHERE seq = -1",
            ],
            3,
        ),
        (["DELETE FROM audit WHERE seq = 7"], 7),
    ],
    ids=["edited", "deleted", "reordered", "truncated"],
)
def test_audit_verify_fails_on_a_tampered_chain(
    lam: Lam, home: Path, statements: list[str], seq: int
) -> None:
    """Edited, deleted, reordered or truncated audit rows make verify exit 1 naming the event."""
    lam("ask", "uptime in staging", "--as", "alice")
    tamper(home, *statements)
    result = lam("audit", "verify")
    assert result.returncode == 1
    assert f"audit chain broken at event {seq}" in result.stderr


def test_chat_runs_requests_and_commands(lam: Lam) -> None:
    """The chat REPL asks, lists history and quits on /quit."""
    result = lam("chat", "--as", "alice", stdin="uptime in staging\n/history\n/bogus\n/quit\n")
    assert result.returncode == 0, result.stderr
    assert "finished successfully" in result.stdout
    assert "succeeded" in result.stdout
    assert "unknown or incomplete command '/bogus'" in result.stdout


QUESTION = "Which check: uptime or disk usage?"


@pytest.fixture
async def model() -> AsyncIterator[tuple[ScriptedOpenAI, dict[str, str]]]:
    """The scripted model server, and the settings that make ``lam`` plan with it."""
    async with ScriptedOpenAI.running() as server:
        yield (
            server,
            {
                "LAM_MODEL": "lam-test-model",
                "OPENAI_BASE_URL": server.base_url,
                "OPENAI_API_KEY": "sk-lam-cli-test",
            },
        )
        server.assert_done()


async def test_answer_continues_the_request_the_model_asked_about(
    lam: Lam, model: tuple[ScriptedOpenAI, dict[str, str]]
) -> None:
    """lam ask prints the question, lam show repeats it, and the requester's lam answer runs it."""
    server, env = model
    server.enqueue(
        tool_calls(("clarify", {"question": QUESTION})), tool_calls(("shell__uptime", {}))
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return lam(*args, env=env)

    asked = await asyncio.to_thread(
        run, "ask", "check the box in staging", "--as", "alice", "--json"
    )
    assert asked.returncode == 0, asked.stderr
    record = as_json(asked)
    request_id = str(record["id"])
    assert (record["state"], record["question"], record["steps"]) == ("clarifying", QUESTION, [])

    shown = await asyncio.to_thread(run, "show", request_id)
    assert "waiting for an answer" in shown.stdout
    assert f"LAM asks: {QUESTION}" in shown.stdout
    assert f"lam answer {request_id} '<your answer>' --as <you>" in shown.stdout

    other = await asyncio.to_thread(run, "answer", request_id, "uptime", "--as", "bob")
    assert other.returncode == 1
    assert "only user:alice, who asked for request" in other.stderr

    answered = await asyncio.to_thread(
        run, "answer", request_id, "uptime", "--as", "alice", "--json"
    )
    assert answered.returncode == 0, answered.stderr
    done = as_json(answered)
    assert (done["id"], done["state"], done["question"]) == (request_id, "succeeded", None)
    assert done["conversation"] == [{"question": QUESTION, "answer": "uptime"}]
    assert "load average" in done["steps"][0]["output"]  # type: ignore[index]

    again = await asyncio.to_thread(run, "answer", request_id, "disk", "--as", "alice")
    assert again.returncode == 1
    assert "finished successfully, not waiting for an answer" in again.stderr


async def test_chat_answers_the_question_with_the_next_line(
    lam: Lam, model: tuple[ScriptedOpenAI, dict[str, str]]
) -> None:
    """In lam chat the line after a question answers it, and the same request runs."""
    server, env = model
    server.enqueue(
        tool_calls(("clarify", {"question": QUESTION})), tool_calls(("shell__uptime", {}))
    )
    result = await asyncio.to_thread(
        lam, "chat", "--as", "alice", env=env, stdin="check the box in staging\nuptime\n/quit\n"
    )
    assert result.returncode == 0, result.stderr
    question, _, after = result.stdout.partition(f"LAM asks: {QUESTION}")
    assert "waiting for an answer" in question
    assert "Your next line answers this" in after
    assert "answer> " in after
    assert "finished successfully" in after
    assert "answered: uptime" in after
    # Both renderings are of one request: the answer continued it.
    (request_id,) = set(re.findall(r"Request (\w+): ", result.stdout))
    assert as_json(lam("show", request_id, "--json"))["state"] == "succeeded"


def test_demo_walks_through_the_whole_flow(lam: Lam) -> None:
    """lam demo runs, approves, denies, rejects and verifies the audit chain."""
    result = lam("demo")
    assert result.returncode == 0, result.stderr
    for expected in (
        "finished successfully",
        "awaiting approval",
        "someone else must approve it",
        "denied by policy",
        "rejected by user:bob: deploy freeze until Monday",
        "chain intact",
    ):
        assert expected in result.stdout
