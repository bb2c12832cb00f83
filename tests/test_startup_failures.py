"""Bad settings stop ``lam serve`` and ``lam worker`` within seconds, with one line naming
the setting; a running replica says it is not ready while Redis is down."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.lam_process import LamProcesses, run_lam
from tests.support.policies import SHIPPED_POLICIES
from tests.support.redis_server import RedisServer, free_port
from tests.support.slack import BOT_TOKEN, SIGNING_SECRET
from tests.support.waiting import eventually

STARTUP_LIMIT = 10.0
"""Seconds a refused start-up may take, Python's own start included."""


@pytest.fixture
def base_env(tmp_path: Path, redis_url: str, redis_prefix: str) -> dict[str, str]:
    """Settings a worker and (over HTTP) a Slack front would start with."""
    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    return {
        "PATH": os.environ["PATH"],
        "LAM_HOME": str(tmp_path / "home"),
        "LAM_POLICY_DIR": str(policies),
        "REDIS_URL": redis_url,
        "LAM_REDIS_PREFIX": redis_prefix,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        # Nothing must get as far as Slack: a refused start-up stops before it.
        "SLACK_API_URL": f"http://127.0.0.1:{free_port()}/api/",
    }


def refused(command: str, env: dict[str, str]) -> tuple[str, float]:
    """Run ``lam COMMAND``; it must exit 2 with one error line, last; that line and the time."""
    args = [command, "--port", "0"] if command == "serve" else [command]
    started = time.monotonic()
    result = run_lam(*args, env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:], result.stderr
    return lines[-1], elapsed


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_an_unreachable_redis_stops_start_up_naming_redis_url(
    command: str, base_env: dict[str, str]
) -> None:
    """REDIS_URL pointing at a closed port: exit 2 at once, naming REDIS_URL, password masked."""
    env = {**base_env, "REDIS_URL": f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"}
    line, elapsed = refused(command, env)
    assert line.startswith("error: REDIS_URL 'redis://:***@127.0.0.1:")
    assert "hunter2-secret" not in line
    assert elapsed < STARTUP_LIMIT


def test_a_redis_that_never_answers_stops_start_up_within_seconds(
    base_env: dict[str, str],
) -> None:
    """A port that takes the connection but never answers stops start-up after the timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        line, elapsed = refused("worker", {**base_env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"})
    assert line.startswith(f"error: REDIS_URL 'redis://127.0.0.1:{port}/0': no answer from Redis")
    assert elapsed < STARTUP_LIMIT


def test_lam_serve_without_a_bot_token_stops_naming_it(base_env: dict[str, str]) -> None:
    """No SLACK_BOT_TOKEN: lam serve exits 2 at once, naming it."""
    env = {name: value for name, value in base_env.items() if name != "SLACK_BOT_TOKEN"}
    line, elapsed = refused("serve", env)
    assert "SLACK_BOT_TOKEN is not set" in line
    assert elapsed < STARTUP_LIMIT


LAM_YAML_CASES = {
    "not YAML": ("connectors: [\n", "is not valid YAML"),
    "unknown key": ("connector: []\n", "connector: Extra inputs are not permitted"),
}


@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize("case", sorted(LAM_YAML_CASES))
def test_an_invalid_lam_yaml_stops_start_up_naming_lam_config(
    command: str, case: str, base_env: dict[str, str], tmp_path: Path
) -> None:
    """A lam.yaml that is not YAML, or has an unknown top-level key, is named with its problem."""
    text, problem = LAM_YAML_CASES[case]
    config = tmp_path / "lam.yaml"
    config.write_text(text, encoding="utf-8")
    line, elapsed = refused(command, {**base_env, "LAM_CONFIG": str(config)})
    assert line.startswith(f"error: LAM_CONFIG: {str(config)!r}") and problem in line
    assert elapsed < STARTUP_LIMIT


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_policy_file_that_does_not_parse_stops_start_up_naming_it(
    command: str, base_env: dict[str, str]
) -> None:
    """A policy.csv line with too few fields stops start-up, naming the file and the line."""
    policy = Path(base_env["LAM_POLICY_DIR"]) / "policy.csv"
    lines = len(policy.read_text(encoding="utf-8").splitlines())
    with policy.open("a", encoding="utf-8") as csv:
        csv.write("p, role:developer, prod, shell.*\n")
    line, elapsed = refused(command, base_env)
    assert line.startswith(f"error: {policy}:{lines + 1}:")
    assert elapsed < STARTUP_LIMIT


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_bad_shutdown_grace_stops_start_up_naming_it(
    command: str, base_env: dict[str, str]
) -> None:
    """LAM_SHUTDOWN_GRACE_SECONDS that is not a positive number is named."""
    line, elapsed = refused(command, {**base_env, "LAM_SHUTDOWN_GRACE_SECONDS": "soon"})
    assert line.startswith("error: invalid setting LAM_SHUTDOWN_GRACE_SECONDS")
    assert elapsed < STARTUP_LIMIT


def test_a_health_port_in_use_stops_the_worker_naming_it(base_env: dict[str, str]) -> None:
    """lam worker --health-port on a port another process holds exits 2, naming the port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_lam("worker", "--health-port", str(port), "--host", "127.0.0.1", env=base_env)
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: cannot listen on 127.0.0.1:{port}")
    )


# A running replica while Redis comes and goes.


@pytest.fixture
def worker_on_private_redis(
    tmp_path: Path, private_redis: RedisServer
) -> Iterator[tuple[LamProcesses, int]]:
    """A ``lam`` on a Redis of the test's own, with one connector that cannot start."""
    with LamProcesses(tmp_path, private_redis.url, "lam:") as processes:
        config = Path(processes.env["LAM_CONFIG"])
        config.write_text(
            config.read_text(encoding="utf-8") + "  - {type: telnet, name: old}\n",
            encoding="utf-8",
        )
        yield processes, free_port()


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_readiness_follows_redis_down_and_up_and_lists_failed_connectors(
    worker_on_private_redis: tuple[LamProcesses, int], private_redis: RedisServer
) -> None:
    """/readyz is 503 naming the store and the queue while Redis is down, 200 once it is back;
    a connector that failed is listed but does not make the worker unready."""
    lam, port = worker_on_private_redis
    await lam.start(
        "worker",
        "worker",
        "--health-port",
        str(port),
        "--host",
        "127.0.0.1",
        ready="worker.started",
    )
    base = f"http://127.0.0.1:{port}"

    status, body = await get(f"{base}/readyz")
    assert status == 200, body
    assert body["checks"] == {"store": "ok", "policy": "ok", "job_queue": "ok", "shutdown": "ok"}
    assert "unknown type 'telnet'" in body["connectors_failed"]["old"]
    status, exposition = await get(f"{base}/metrics")
    assert status == 200 and "lam_connectors_failed 1.0" in exposition

    private_redis.stop(keep_data=True)

    async def unready() -> dict[str, Any] | None:
        status, body = await get(f"{base}/readyz")
        return body if status == 503 else None

    down = await eventually(unready, "/readyz to say 503")
    assert down["status"] == "unavailable"
    assert down["checks"]["store"].startswith("unreachable")
    assert down["checks"]["job_queue"].startswith("unreachable")
    assert (await get(f"{base}/healthz"))[0] == 200
    status, exposition = await get(f"{base}/metrics")
    assert status == 200 and "lam_job_queue_depth NaN" in exposition

    private_redis.start()

    async def ready() -> bool:
        return (await get(f"{base}/readyz"))[0] == 200

    await eventually(ready, "/readyz to say 200 again")
