"""Logs of a real ``lam ask``: JSON lines bound to the request in production, readable lines
in development, and never a secret."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.lam_process import run_lam
from tests.support.policies import write_policy

OPENAI_KEY = "sk-planted-openai-key-0123456789"
BOT_TOKEN = "xoxb-planted-bot-token-0123456789"
SECRETS = (OPENAI_KEY, BOT_TOKEN, "planted-redis-password")

RUNBOOKS = """\
connectors:
  - type: shell
    name: shell
    settings:
      runbooks:
        note:
          description: Write a note.
          examples: ["note {text}"]
          argv: [echo, noted, "{text}"]
          params:
            text: {type: string, description: What to note}
          risk: write
"""
POLICY = "g, user:alice, role:developer, *\np, role:developer, staging, shell.*, *, run, allow\n"


def ask(tmp_path: Path, text: str, log_format: str) -> subprocess.CompletedProcess[str]:
    """``lam ask TEXT --json`` at info level, with secrets planted in its settings."""
    config = tmp_path / "lam.yaml"
    config.write_text(RUNBOOKS, encoding="utf-8")
    env = {
        "PATH": os.environ["PATH"],
        "LAM_HOME": str(tmp_path / "home"),
        "LAM_CONFIG": str(config),
        "LAM_POLICY_DIR": str(write_policy(tmp_path / "policies", POLICY)),
        "LAM_LOG_FORMAT": log_format,
        "LAM_LOG_LEVEL": "info",
        "OPENAI_API_KEY": OPENAI_KEY,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        # Set, but never used: the secret in it is masked all the same.
        "SLACK_SIGNING_SECRET": SECRETS[2],
    }
    return run_lam("ask", text, "--as", "alice", "--env", "staging", "--json", env=env)


def test_json_logs_carry_the_request_id_on_every_request_line(tmp_path: Path) -> None:
    """Every stderr line is a JSON object; each request and step event names the request."""
    result = ask(tmp_path, "note deployed", "json")
    assert result.returncode == 0, result.stderr
    request_id = json.loads(result.stdout)["id"]
    lines: list[dict[str, Any]] = [json.loads(line) for line in result.stderr.splitlines()]
    scoped = [line for line in lines if line["event"].startswith(("request.", "step."))]
    assert {line["event"] for line in scoped} >= {
        "request.received",
        "request.planned",
        "step.started",
        "step.finished",
        "request.succeeded",
    }
    assert all(line.get("request_id") == request_id for line in scoped), scoped
    assert {line["level"] for line in lines} <= {"debug", "info", "warning", "error"}
    assert all("timestamp" in line for line in lines)


@pytest.mark.parametrize("log_format", ["json", "console"])
@pytest.mark.parametrize(
    ("text", "exit_code"),
    [
        # Planned and run: the secret reaches the runbook's argument and its output.
        (f"note {OPENAI_KEY}", 0),
        # Not planned: the text is quoted back in the reason, logged and printed.
        (f"note {OPENAI_KEY} and {BOT_TOKEN}", 2),
    ],
)
def test_no_secret_appears_in_the_logs_or_the_output(
    tmp_path: Path, log_format: str, text: str, exit_code: int
) -> None:
    """A configured secret typed into a request is masked in every line LAM writes."""
    result = ask(tmp_path, text, log_format)
    assert result.returncode == exit_code, result.stderr
    assert "***" in result.stdout + result.stderr
    for secret in SECRETS:
        assert secret not in result.stdout
        assert secret not in result.stderr


def test_console_logs_are_lines_for_a_person(tmp_path: Path) -> None:
    """LAM_LOG_FORMAT=console writes key=value lines, not JSON, with the request id."""
    result = ask(tmp_path, "note deployed", "console")
    assert result.returncode == 0, result.stderr
    request_id = json.loads(result.stdout)["id"]
    received = [line for line in result.stderr.splitlines() if "request.received" in line]
    assert len(received) == 1 and f"request_id={request_id}" in received[0]
    assert not received[0].startswith("{")
