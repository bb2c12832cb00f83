"""The shell connector: runbook declarations, typed parameters, argv templating, results."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bot.errors import ActionFailed, ConfigError
from connectors._runbook import ParamSpec, Runbook, render
from connectors.base import ActionResult, Connector
from connectors.shell import ShellConnector, ShellSettings
from tests.support.actions import action_context as context

PYTHON = "/usr/bin/python3"
ECHO_ARGS = "import json, sys; print(json.dumps(sys.argv[1:]))"

needs_python = pytest.mark.skipif(not os.path.exists(PYTHON), reason="needs /usr/bin/python3")
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")


def make(runbooks: dict[str, Any] | None = None, **settings: Any) -> ShellConnector:
    return ShellConnector(
        "shell", ShellSettings.model_validate({"runbooks": runbooks or {}, **settings})
    )


async def run(
    connector: ShellConnector, runbook: str, *, dry_run: bool = False, **args: Any
) -> ActionResult:
    action = {a.id: a for a in connector.actions()}[f"shell.{runbook}"]
    return await action.run(action.params.model_validate(args), context(dry_run=dry_run))


def params_of(runbook: dict[str, Any]) -> type[Any]:
    declared = {"description": "A test runbook.", **runbook}
    action = next(a for a in make({"rb": declared}).actions() if a.id == "shell.rb")
    return action.params


@pytest.fixture
def log_dir() -> Iterator[Path]:
    """A log directory the unprivileged runbook user can read, outside pytest's 0700 tree."""
    directory = Path(tempfile.mkdtemp(prefix="lam-logs-"))
    directory.chmod(0o755)
    log = directory / "app.log"
    log.write_text("".join(f"line {i}\n" for i in range(1, 101)), encoding="utf-8")
    log.chmod(0o644)
    yield directory
    shutil.rmtree(directory)


# Declaration and protocol


def test_connector_satisfies_the_protocol_and_lists_the_builtins() -> None:
    """A default shell connector is a Connector offering the four built-in runbooks."""
    connector = make()
    assert isinstance(connector, Connector)
    assert ShellConnector.type_name == "shell"
    actions = {a.id: a for a in connector.actions()}
    assert set(actions) == {
        "shell.disk_usage",
        "shell.uptime",
        "shell.processes",
        "shell.tail_log",
    }
    assert all(a.risk == "read" and a.idempotent for a in actions.values())
    assert "tail {lines} lines of {path}" in actions["shell.tail_log"].examples
    assert actions["shell.tail_log"].resource_param == "path"


def test_declared_runbook_replaces_a_builtin_and_builtins_can_be_left_out() -> None:
    """A runbook named like a built-in wins; include_builtin false leaves only declared ones."""
    replaced = make({"uptime": {"description": "mine", "argv": ["cat", "/proc/uptime"]}})
    assert {a.id: a for a in replaced.actions()}["shell.uptime"].description == "mine"
    only = make({"mine": {"description": "mine", "argv": ["true"]}}, include_builtin=False)
    assert [a.id for a in only.actions()] == ["shell.mine"]


def test_action_carries_the_runbook_declaration() -> None:
    """Risk, resource, timeout, dry-run support and examples reach the Action unchanged."""
    connector = make(
        {
            "restart": {
                "description": "Restart a unit.",
                "examples": ["restart {unit}"],
                "argv": ["systemctl", "restart", "{unit}"],
                "params": {"unit": {"type": "string"}},
                "risk": "write",
                "resource": "unit",
                "timeout": 7,
                "supports_dry_run": True,
                "dry_run_argv": ["systemctl", "status", "{unit}"],
            }
        },
        include_builtin=False,
    )
    (action,) = connector.actions()
    assert (action.risk, action.resource_param, action.timeout) == ("write", "unit", 7)
    assert action.supports_dry_run and not action.idempotent
    assert action.examples == ("restart {unit}",)
    assert action.resource(action.params.model_validate({"unit": "web"})) == "web"


@pytest.mark.parametrize(
    ("runbook", "problem"),
    [
        ({"argv": ["cat", "{missing}"]}, "undeclared parameters"),
        ({"argv": ["{prog}"], "params": {"prog": {}}}, "must not come from a parameter"),
        ({"argv": ["cat", "{p.attr}"], "params": {"p": {}}}, "plain parameter names"),
        ({"argv": ["cat", "{p[0]}"], "params": {"p": {}}}, "plain parameter names"),
        ({"argv": ["cat", "{}"]}, "plain parameter names"),
        ({"argv": ["cat", "{0}"]}, "plain parameter names"),
        ({"argv": ["cat", "{p!r}"], "params": {"p": {}}}, "plain parameter names"),
        ({"argv": ["cat", "{p:>9}"], "params": {"p": {}}}, "plain parameter names"),
        ({"argv": ["cat", "a}"]}, "literal braces"),
        ({"argv": ["cat"], "params": {"p": {}}}, "not used in argv"),
        ({"argv": ["cat", "{p}"], "params": {"p": {}}, "resource": "q"}, "resource 'q'"),
        ({"argv": ["cat"], "examples": ["cat {q}"]}, "undeclared slots"),
        ({"argv": ["cat", "{p}"], "params": {"p": {"type": "path"}}}, "needs 'under'"),
        ({"argv": ["cat", "{p}"], "params": {"p": {"under": ["/x"]}}}, "path parameters only"),
        ({"argv": ["cat", "{json}"], "params": {"json": {}}}, "taken by pydantic"),
        ({"argv": ["cat", "{P}"], "params": {"P": {}}}, "must match"),
        ({"argv": ["cat"], "dry_run_argv": ["echo"]}, "supports_dry_run is false"),
        ({"argv": ["cat"], "read_paths": ["/proc/1"]}, "sandbox's own"),
        ({"argv": ["cat"], "read_paths": ["/"]}, "cover the sandbox"),
        (
            {"argv": ["cat", "{n}"], "params": {"n": {"type": "integer", "default": "x"}}},
            "not a valid integer",
        ),
        (
            {"argv": ["cat", "{n}"], "params": {"n": {"default": "a", "required": True}}},
            "cannot also be required",
        ),
        ({"argv": ["cat", "{n}"], "params": {"n": {"pattern": "("}}}, "not a valid regex"),
    ],
)
def test_invalid_runbook_declaration_is_refused(runbook: dict[str, Any], problem: str) -> None:
    """A runbook that could inject, escape or confuse the planner is refused when loaded."""
    with pytest.raises(ValidationError, match=problem):
        ShellSettings.model_validate({"runbooks": {"rb": {"description": "d", **runbook}}})


def test_runbook_names_must_be_action_id_segments() -> None:
    """A runbook name that cannot be part of an action id is refused."""
    with pytest.raises(ValidationError, match="runbook name 'Bad-Name'"):
        ShellSettings.model_validate(
            {"runbooks": {"Bad-Name": {"description": "d", "argv": ["x"]}}}
        )


def test_unknown_settings_and_runbook_keys_are_refused() -> None:
    """A typo in lam.yaml is an error, never silently ignored."""
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        ShellSettings.model_validate({"sandbx": "off"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        Runbook.model_validate({"description": "d", "argv": ["x"], "shell": True})


def test_run_as_an_unknown_user_stops_start_up() -> None:
    """A run_as user that does not exist is a configuration error naming it."""
    with pytest.raises(ConfigError, match="no-such-user-lam"):
        make(run_as="no-such-user-lam")


# Parameters


def test_values_never_become_extra_argv_elements() -> None:
    """Spaces, semicolons, quotes and command substitutions stay inside their one element."""
    hostile = ["a b", "x; rm -rf /", "$(touch /tmp/pwned)", "`id`", "'q' \"q\"", "a|b&&c", "{p}"]
    for value in hostile:
        argv = render(["prog", "{p}", "--name={p}"], {"p": value})
        assert argv == ["prog", value, f"--name={value}"]


def test_unset_optional_value_drops_the_elements_that_mention_it() -> None:
    """An optional parameter left unset removes its argv elements instead of passing ''."""
    assert render(["df", "-h", "{path}"], {"path": None}) == ["df", "-h"]
    assert render(["log", "--since={since}", "x"], {"since": None}) == ["log", "x"]
    assert render(["a", "{{literal}}"], {}) == ["a", "{literal}"]


@needs_python
async def test_hostile_values_reach_the_program_as_single_arguments() -> None:
    """A real run receives each value as exactly one argument, with nothing interpreted."""
    connector = make(
        {
            "echo_args": {
                "description": "Print argv.",
                "argv": ["python3", "-c", ECHO_ARGS, "{text}", "pre-{text}-post"],
                "params": {"text": {"type": "string"}},
            }
        },
        sandbox="off",
    )
    value = "a b; echo $(id) `id` | cat > /tmp/x"
    result = await run(connector, "echo_args", text=value)
    assert json.loads(result.output) == [value, f"pre-{value}-post"]


def test_option_injection_is_refused_unless_allowed() -> None:
    """A value starting with '-' is refused, unless the parameter says allow_dash."""
    strict = params_of({"argv": ["rm", "{target}"], "params": {"target": {}}})
    with pytest.raises(ValidationError, match="must not start with '-'"):
        strict.model_validate({"target": "-rf"})
    number = params_of({"argv": ["head", "-n", "{n}"], "params": {"n": {"type": "integer"}}})
    with pytest.raises(ValidationError, match="must not start with '-'"):
        number.model_validate({"n": -5})
    relaxed = params_of({"argv": ["grep", "{p}"], "params": {"p": {"allow_dash": True}}})
    assert relaxed.model_validate({"p": "-v"}).p == "-v"


@pytest.mark.parametrize("value", ["a\x00b", "a\nb", "a\rb", "a\x1b[31mb", "a\x7fb"])
def test_control_characters_are_refused(value: str) -> None:
    """NUL and other control characters never reach a command."""
    params = params_of({"argv": ["echo", "{p}"], "params": {"p": {}}})
    with pytest.raises(ValidationError, match="control characters"):
        params.model_validate({"p": value})


def test_pattern_must_match_the_whole_value() -> None:
    """A pattern is anchored at both ends: a matching prefix is not enough."""
    params = params_of({"argv": ["echo", "{p}"], "params": {"p": {"pattern": "[a-z]+"}}})
    assert params.model_validate({"p": "web"}).p == "web"
    for value in ["web;reboot", "x web", "WEB"]:
        with pytest.raises(ValidationError, match="as a whole"):
            params.model_validate({"p": value})


def test_choices_and_bounds_are_enforced() -> None:
    """Values outside choices or outside minimum/maximum are refused."""
    params = params_of(
        {
            "argv": ["x", "{env}", "{n}", "{ratio}"],
            "params": {
                "env": {"choices": ["dev", "prod"]},
                "n": {"type": "integer", "minimum": 1, "maximum": 10},
                "ratio": {"type": "number", "default": 0.5, "maximum": 1},
            },
        }
    )
    assert params.model_validate({"env": "dev", "n": "3"}).n == 3
    with pytest.raises(ValidationError, match="must be one of 'dev', 'prod'"):
        params.model_validate({"env": "qa", "n": 3})
    with pytest.raises(ValidationError, match="less than or equal to 10"):
        params.model_validate({"env": "dev", "n": 11})
    with pytest.raises(ValidationError, match="finite number"):
        params.model_validate({"env": "dev", "n": 1, "ratio": "nan"})


def test_unknown_parameter_is_refused() -> None:
    """An argument the runbook does not declare is an error, not ignored."""
    params = params_of({"argv": ["echo", "{p}"], "params": {"p": {}}})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        params.model_validate({"p": "x", "extra": "y"})


def test_path_under_an_allowed_directory_is_accepted_as_its_real_path(log_dir: Path) -> None:
    """A path inside an allowed directory is accepted, resolved to its real path."""
    (log_dir / "sub").mkdir()
    params = params_of(
        {"argv": ["cat", "{p}"], "params": {"p": {"type": "path", "under": [str(log_dir)]}}}
    )
    assert params.model_validate({"p": f"{log_dir}/app.log"}).p == str(log_dir / "app.log")
    assert params.model_validate({"p": f"{log_dir}/sub/../app.log"}).p == str(log_dir / "app.log")


def test_path_escapes_are_refused(log_dir: Path) -> None:
    """'../', a symlink leading out, and a relative path all fail validation."""
    (log_dir / "evil").symlink_to("/etc/passwd")
    params = params_of(
        {"argv": ["cat", "{p}"], "params": {"p": {"type": "path", "under": [str(log_dir)]}}}
    )
    for escape in [f"{log_dir}/../../etc/passwd", f"{log_dir}/evil", f"{log_dir}x/app.log"]:
        with pytest.raises(ValidationError, match="which is not under"):
            params.model_validate({"p": escape})
    with pytest.raises(ValidationError, match="must be an absolute path"):
        params.model_validate({"p": "app.log"})


async def test_paths_are_checked_again_right_before_running(log_dir: Path) -> None:
    """A directory swapped for a symlink after validation cannot lead the run elsewhere."""
    (log_dir / "sub").mkdir()
    (log_dir / "sub" / "app.log").write_text("inside", encoding="utf-8")
    connector = make(
        {
            "cat": {
                "description": "d",
                "argv": ["cat", "{p}"],
                "params": {"p": {"type": "path", "under": [str(log_dir)]}},
            }
        },
        sandbox="off",
    )
    action = {a.id: a for a in connector.actions()}["shell.cat"]
    params = action.params.model_validate({"p": f"{log_dir}/sub/app.log"})
    (log_dir / "sub").rename(log_dir / "moved")
    (log_dir / "sub").symlink_to("/var/log")
    with pytest.raises(ActionFailed, match="no longer valid: p: .* which is not under"):
        await action.run(params, context())


def test_params_schema_describes_the_runbook_faithfully() -> None:
    """The JSON schema the LLM sees has descriptions, types, bounds, choices and no extras."""
    params = params_of(
        {
            "description": "Restart a unit.",
            "argv": ["x", "{unit}", "{n}", "{mode}"],
            "params": {
                "unit": {"description": "The systemd unit.", "pattern": "[a-z]+"},
                "n": {"type": "integer", "default": 5, "minimum": 1, "maximum": 9},
                "mode": {"choices": ["soft", "hard"], "required": False},
            },
        }
    )
    schema = params.model_json_schema()
    assert schema["description"] == "Restart a unit."
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["unit"]
    unit, n = schema["properties"]["unit"], schema["properties"]["n"]
    assert unit["description"] == "The systemd unit."
    assert unit["pattern"] == "^(?:[a-z]+)$"
    assert (n["type"], n["default"], n["minimum"], n["maximum"]) == ("integer", 5, 1, 9)
    assert schema["properties"]["mode"]["enum"] == ["soft", "hard"]


# Running


@pytest.mark.sandbox
@needs_bwrap
async def test_builtins_run_and_return_output(log_dir: Path) -> None:
    """Each built-in runs in the sandbox and returns what the command printed."""
    connector = make(log_dirs=[str(log_dir)])
    disk = await run(connector, "disk_usage")
    assert "Filesystem" in disk.output and disk.sandboxed is True
    assert "/usr" in (await run(connector, "disk_usage", path="/usr")).output
    assert " up " in (await run(connector, "uptime")).output
    assert "COMMAND" in (await run(connector, "processes")).output
    tail = await run(connector, "tail_log", path=str(log_dir / "app.log"), lines=3)
    assert tail.output == "line 98\nline 99\nline 100\n"
    assert tail.data == {"exit_code": 0, "truncated": False}


def test_tail_log_refuses_a_file_outside_the_log_dirs(log_dir: Path) -> None:
    """tail_log cannot be pointed at a file outside its log directories."""
    action = {a.id: a for a in make(log_dirs=[str(log_dir)]).actions()}["shell.tail_log"]
    with pytest.raises(ValidationError, match="which is not under"):
        action.params.model_validate({"path": "/etc/shadow"})


async def test_nonzero_exit_fails_naming_the_code_and_stderr() -> None:
    """A failing command raises ActionFailed with its exit code and last stderr lines."""
    connector = make(
        {"ls_missing": {"description": "d", "argv": ["ls", "/no-such-dir-lam"]}}, sandbox="off"
    )
    with pytest.raises(ActionFailed, match=r"'ls_missing' exited with code 2:\n.*No such file"):
        await run(connector, "ls_missing")


@needs_python
async def test_death_by_signal_names_the_signal() -> None:
    """A command killed by a signal is reported with the signal's name."""
    suicide = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    connector = make(
        {"die": {"description": "d", "argv": ["python3", "-c", suicide]}}, sandbox="off"
    )
    with pytest.raises(ActionFailed, match="killed by SIGTERM"):
        await run(connector, "die")


@pytest.mark.sandbox
@needs_bwrap
@needs_python
async def test_file_size_limit_stops_a_runaway_writer() -> None:
    """Writing past file_size_bytes kills the command with SIGXFSZ, reported as the limit."""
    # Python ignores SIGXFSZ; most programs do not, so the default action is restored.
    writer = (
        "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_DFL);"
        " open('/tmp/big', 'wb').write(b'x' * 100000)"
    )
    connector = make(
        {"big": {"description": "d", "argv": ["python3", "-c", writer]}}, file_size_bytes=1000
    )
    with pytest.raises(ActionFailed, match=r"SIGXFSZ \(it wrote a file past the limit of 1000"):
        await run(connector, "big")


async def test_missing_program_fails_naming_it() -> None:
    """A runbook whose program does not exist fails with a message naming the program."""
    connector = make(
        {"ghost": {"description": "d", "argv": ["no-such-program-lam"]}}, sandbox="off"
    )
    with pytest.raises(ActionFailed, match="no-such-program-lam"):
        await run(connector, "ghost")


@needs_python
async def test_stderr_of_a_successful_run_is_kept_after_stdout() -> None:
    """What a successful command wrote to stderr follows its stdout, labelled."""
    both = "import sys; print('out'); print('careful', file=sys.stderr)"
    connector = make({"both": {"description": "d", "argv": ["python3", "-c", both]}}, sandbox="off")
    assert (await run(connector, "both")).output == "out\n\n[stderr]\ncareful"


# Dry run


async def test_dry_run_runs_the_dry_run_argv_instead() -> None:
    """With dry_run the declared dry_run_argv runs and the real argv does not."""
    marker = Path(tempfile.gettempdir()) / f"lam-dry-{uuid.uuid4().hex}"
    connector = make(
        {
            "create": {
                "description": "d",
                "argv": ["touch", str(marker)],
                "supports_dry_run": True,
                "dry_run_argv": ["echo", "would create", str(marker)],
            }
        },
        sandbox="off",
    )
    result = await run(connector, "create", dry_run=True)
    assert result.output == f"would create {marker}\n"
    assert not marker.exists()


async def test_dry_run_without_a_dry_run_argv_only_reports_the_argv() -> None:
    """A runbook that supports dry-run without its own argv reports what it would run."""
    result = await run(make(sandbox="off"), "tail_log", dry_run=True, path="/var/log/syslog")
    assert result.output == "dry run: would run tail -n 50 /var/log/syslog"
    assert result.sandboxed is None


async def test_dry_run_of_a_runbook_without_dry_run_support_runs_nothing() -> None:
    """A runbook without dry-run support refuses a dry run instead of running for real."""
    marker = Path(tempfile.gettempdir()) / f"lam-dry-{uuid.uuid4().hex}"
    connector = make({"create": {"description": "d", "argv": ["touch", str(marker)]}})
    with pytest.raises(ActionFailed, match="no dry-run mode"):
        await run(connector, "create", dry_run=True)
    assert not marker.exists()


def test_param_spec_defaults_make_parameters_optional() -> None:
    """A parameter is required unless it has a default or says required: false."""
    assert ParamSpec().is_required
    assert not ParamSpec(default="x").is_required
    assert not ParamSpec(required=False).is_required
