"""The connector framework: secret references, start-up failures, and `lam config check`."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from bot.config import Settings
from bot.errors import ConfigError
from connectors import Action, ConnectorConfig, describe_validation_error, start_connectors
from connectors.http import BasicAuth
from connectors.secrets import Secret, secret_values
from tests.support.actions import ScriptedConnector
from tests.support.lam_process import run_lam
from tests.support.policies import SHIPPED_POLICIES

CANARY = "canary-7f3a9c2e-secret"


class VaultSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: Secret
    mode: str = "ok"
    nested: list[Secret] = []


class VaultConnector:
    """A connector whose start succeeds, fails or hangs as its settings say."""

    type_name: ClassVar[str] = "vault"
    Settings: ClassVar[type[BaseModel]] = VaultSettings

    def __init__(self, name: str, settings: VaultSettings) -> None:
        self.name = name
        self.settings = settings
        self.closed = False
        self.changed: Callable[[], None] | None = None
        self.extra: list[Action] = []

    async def start(self, changed: Callable[[], None]) -> None:
        self.changed = changed
        if self.settings.mode == "refuse":
            raise ConnectionRefusedError(f"cannot reach vault for {self.name}")
        if self.settings.mode == "hang":
            await asyncio.Event().wait()

    def actions(self) -> Sequence[Action]:
        return [*ScriptedConnector(self.name).actions()[:1], *self.extra]

    async def aclose(self) -> None:
        self.closed = True


TYPES = {"vault": VaultConnector, "test": ScriptedConnector}


def test_env_and_file_references_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An env: and a file: reference resolve to the secret, which prints masked."""
    monkeypatch.setenv("LAM_TEST_TOKEN", CANARY)
    secret_file = tmp_path / "token"
    secret_file.write_text(CANARY + "-file\n")
    settings = VaultSettings.model_validate(
        {"token": "env:LAM_TEST_TOKEN", "nested": [f"file:{secret_file}"]}
    )
    assert settings.token.get_secret_value() == CANARY
    assert secret_values(settings) == [CANARY, CANARY + "-file"]
    assert CANARY not in repr(settings)
    assert CANARY not in settings.model_dump_json()


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("hunter2-literal", "a secret must be a reference"),
        ("env:LAM_TEST_UNSET_VARIABLE", "environment variable LAM_TEST_UNSET_VARIABLE is not set"),
        ("file:/nonexistent/lam-secret", "cannot read secret file /nonexistent/lam-secret"),
        (42, "a secret must be a reference"),
    ],
)
def test_bad_references_say_what_is_wrong(reference: object, problem: str) -> None:
    """A literal secret, an unset variable or a missing file is refused with the reason."""
    with pytest.raises(ValidationError) as raised:
        VaultSettings.model_validate({"token": reference})
    (reported,) = (describe_validation_error(e) for e in raised.value.errors())
    assert reported.startswith("token: ") and problem in reported
    assert "hunter2-literal" not in reported


async def test_a_failed_instance_is_reported_and_the_others_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bad settings, a refused connection and a hang each fail one instance, with the reason."""
    monkeypatch.setenv("LAM_TEST_TOKEN", CANARY)
    configs = [
        ConnectorConfig(type="test", name="good"),
        ConnectorConfig(
            type="vault",
            name="refusing",
            settings={"token": "env:LAM_TEST_TOKEN", "mode": "refuse"},
        ),
        ConnectorConfig(
            type="vault", name="hanging", settings={"token": "env:LAM_TEST_TOKEN", "mode": "hang"}
        ),
        ConnectorConfig(type="vault", name="unset", settings={"token": "env:LAM_NOT_SET_AT_ALL"}),
        ConnectorConfig(type="ftp", name="old"),
    ]
    catalog = await start_connectors(configs, TYPES, start_within=0.2)
    assert [connector.name for connector in catalog.connectors] == ["good"]
    assert "good.noop" in catalog
    assert catalog.failures["refusing"] == "connector 'refusing': cannot reach vault for refusing"
    assert catalog.failures["hanging"] == "connector 'hanging': did not start within 0.2 s"
    assert "environment variable LAM_NOT_SET_AT_ALL is not set" in catalog.failures["unset"]
    assert "unknown type 'ftp'" in catalog.failures["old"]
    assert catalog.secrets == [CANARY, CANARY]


async def test_a_connector_that_changes_its_actions_refreshes_the_catalog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When a connector calls changed(), the catalog offers its new actions."""
    monkeypatch.setenv("LAM_TEST_TOKEN", CANARY)
    config = ConnectorConfig(type="vault", name="v", settings={"token": "env:LAM_TEST_TOKEN"})
    catalog = await start_connectors([config], TYPES)
    (connector,) = catalog.connectors
    assert isinstance(connector, VaultConnector) and connector.changed is not None
    assert "v.echo" not in catalog
    connector.extra = [ScriptedConnector("v").actions()[1]]
    connector.changed()
    assert "v.echo" in catalog


def test_two_instances_with_one_name_stop_start_up() -> None:
    """Two lam.yaml entries with one name are refused: their action ids would clash."""
    configs = [ConnectorConfig(type="test", name="twin")] * 2
    with pytest.raises(ConfigError, match="'twin' is used twice"):
        asyncio.run(start_connectors(configs, TYPES))


def lam(*args: str, config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ["PATH"],
        "LAM_HOME": str(config.parent),
        "LAM_CONFIG": str(config),
        "LAM_POLICY_DIR": str(SHIPPED_POLICIES),
        **env,
    }
    return run_lam(*args, env=environment)


def test_config_check_prints_the_effective_configuration_masked(tmp_path: Path) -> None:
    """`lam config check` shows settings and connectors with every secret masked."""
    config = tmp_path / "lam.yaml"
    config.write_text("connectors:\n  - {type: shell, name: ops}\n")
    result = lam("config", "check", config=config, env={"SLACK_BOT_TOKEN": CANARY, "REDIS_URL": ""})
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["environment"]["SLACK_BOT_TOKEN"] == "**********"
    assert effective["connectors"][0]["name"] == "ops"
    assert effective["connectors"][0]["settings"]["sandbox"] == "auto"
    assert CANARY not in result.stdout + result.stderr


def test_config_check_fails_naming_the_bad_instance(tmp_path: Path) -> None:
    """An invalid instance makes `lam config check` exit 2 with the instance and the field."""
    config = tmp_path / "lam.yaml"
    config.write_text("connectors:\n  - {type: shell, name: ops, settings: {sandbox: sometimes}}\n")
    result = lam("config", "check", config=config, env={})
    assert result.returncode == 2
    assert "connector 'ops' (shell): sandbox:" in result.stderr
    assert json.loads(result.stdout)["connectors"][0]["problem"].startswith("connector 'ops'")


def test_config_check_refuses_a_file_that_is_not_yaml(tmp_path: Path) -> None:
    """A lam.yaml that does not parse is one error line naming LAM_CONFIG."""
    config = tmp_path / "lam.yaml"
    config.write_text("connectors: [unclosed\n")
    result = lam("config", "check", config=config, env={})
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: LAM_CONFIG:") and "is not valid YAML" in line


def test_lam_connectors_lists_state_and_actions(tmp_path: Path) -> None:
    """`lam connectors` shows ready instances with actions and failed ones with why."""
    config = tmp_path / "lam.yaml"
    config.write_text("connectors:\n  - {type: shell, name: ops}\n  - {type: ftp, name: old}\n")
    result = lam("connectors", "--json", config=config, env={})
    assert result.returncode == 1
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["ops"]["state"] == "ready" and "ops.disk_usage" in rows["ops"]["actions"]
    assert rows["old"]["state"] == "failed" and "unknown type 'ftp'" in rows["old"]["reason"]


def test_secrets_inside_secrets_are_masked_on_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password inside REDIS_URL and basic auth's encoded header are redacted alone too."""
    settings = Settings.model_validate({"REDIS_URL": "redis://lam:p%40ss-canary@redis:6379/0"})
    assert "p@ss-canary" in settings.secrets()
    monkeypatch.setenv("LAM_TEST_BASIC", CANARY)
    auth = BasicAuth.model_validate(
        {"type": "basic", "username": "lam", "password": "env:LAM_TEST_BASIC"}
    )
    encoded = base64.b64encode(f"lam:{CANARY}".encode()).decode()
    assert secret_values(auth) == [CANARY, encoded]
