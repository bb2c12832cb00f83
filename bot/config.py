"""Settings from the environment, and ``lam.yaml`` for connectors.

A bad setting stops start-up with one line that names it.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.errors import ConfigError
from connectors import ConnectorConfig, describe_validation_error

ENVIRONMENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
REDIS_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    lam_home: Path = Field(default=Path("~/.lam"), alias="LAM_HOME")
    lam_policy_dir: Path = Field(default=Path("policies"), alias="LAM_POLICY_DIR")
    lam_config: Path | None = Field(default=None, alias="LAM_CONFIG")
    lam_environments: str = Field(default="dev,staging,prod", alias="LAM_ENVIRONMENTS")
    """Comma-separated environment names requests may target."""
    lam_default_environment: str = Field(default="dev", alias="LAM_DEFAULT_ENVIRONMENT")
    lam_approval_ttl_seconds: int = Field(default=3600, gt=0, alias="LAM_APPROVAL_TTL_SECONDS")
    lam_policy_reload_seconds: float = Field(default=5.0, gt=0, alias="LAM_POLICY_RELOAD_SECONDS")
    """How often a long-running LAM checks the policy files for changes."""
    lam_log_format: str = Field(default="console", alias="LAM_LOG_FORMAT")
    lam_log_level: str = Field(default="warning", alias="LAM_LOG_LEVEL")
    slack_bot_token: SecretStr | None = Field(default=None, alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr | None = Field(default=None, alias="SLACK_SIGNING_SECRET")
    slack_app_token: SecretStr | None = Field(default=None, alias="SLACK_APP_TOKEN")
    openai_api_key: SecretStr | None = Field(default=None, alias="OPENAI_API_KEY")
    redis_url: SecretStr | None = Field(default=None, alias="REDIS_URL")
    lam_serve_workers: int = Field(default=1, ge=0, le=64, alias="LAM_SERVE_WORKERS")
    """Workers ``lam serve`` runs in-process when REDIS_URL is set (0: leave it to lam worker)."""
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    """An OpenAI-compatible API for the LLM planner, e.g. http://127.0.0.1:11434/v1."""
    lam_model: str | None = Field(default=None, alias="LAM_MODEL")
    """The model the LLM planner asks; unset, LAM plans from example phrasings only."""
    lam_llm_timeout_seconds: float = Field(default=30.0, gt=0, alias="LAM_LLM_TIMEOUT_SECONDS")
    lam_llm_max_retries: int = Field(default=2, ge=0, le=10, alias="LAM_LLM_MAX_RETRIES")
    lam_llm_max_repairs: int = Field(default=2, ge=0, le=5, alias="LAM_LLM_MAX_REPAIRS")
    lam_llm_token_budget: int = Field(default=20_000, ge=1, alias="LAM_LLM_TOKEN_BUDGET")
    lam_llm_max_steps: int = Field(default=20, ge=1, le=100, alias="LAM_LLM_MAX_STEPS")
    """The team store and job queue; without it, the embedded SQLite store under LAM_HOME."""
    lam_redis_prefix: str = Field(default="lam:", alias="LAM_REDIS_PREFIX")
    """Starts every key LAM keeps in Redis, so installations can share one server."""
    lam_job_idle_seconds: float = Field(default=60.0, gt=0, alias="LAM_JOB_IDLE_SECONDS")
    """A job its worker has not renewed for this long is reclaimed by another worker."""
    lam_connector_start_seconds: float = Field(
        default=15.0, gt=0, alias="LAM_CONNECTOR_START_SECONDS"
    )
    """How long one connector may take to start before it is reported as failed."""
    lam_max_revisions: int = Field(default=2, ge=0, le=5, alias="LAM_MAX_REVISIONS")
    """Revised plans the model may propose for one request after a step fails."""
    lam_max_clarifications: int = Field(default=3, ge=0, le=10, alias="LAM_MAX_CLARIFICATIONS")
    """Questions the model may ask about one request before LAM gives up on it."""
    lam_shutdown_grace_seconds: float = Field(
        default=25.0, gt=0, le=3600, alias="LAM_SHUTDOWN_GRACE_SECONDS"
    )
    """Seconds running steps have to finish after SIGTERM before they are cut short."""
    lam_job_max_deliveries: int = Field(default=5, ge=1, alias="LAM_JOB_MAX_DELIVERIES")
    """Deliveries of one job before it is dead-lettered and its request failed."""

    @field_validator("lam_log_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in ("console", "json"):
            raise ValueError(f"must be 'console' or 'json', not {value!r}")
        return value

    @field_validator("redis_url", "openai_base_url", "lam_model", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # REDIS_URL= (as compose files and CI matrices write it) means no Redis.
        return None if value == "" else value

    @field_validator("lam_redis_prefix")
    @classmethod
    def _usable_prefix(cls, value: str) -> str:
        if not REDIS_PREFIX.match(value):
            raise ValueError(
                f"{value!r} is not a key prefix; use 1-64 letters, digits and '-_.:', e.g. 'lam:'"
            )
        return value

    @property
    def home(self) -> Path:
        return self.lam_home.expanduser()

    @property
    def database_path(self) -> Path:
        return self.home / "lam.db"

    @property
    def environments(self) -> tuple[str, ...]:
        names = tuple(name.strip() for name in self.lam_environments.split(",") if name.strip())
        for name in names:
            if not ENVIRONMENT_NAME.match(name):
                raise ConfigError(f"LAM_ENVIRONMENTS: {name!r} is not a valid environment name")
        if self.lam_default_environment not in names:
            raise ConfigError(
                f"LAM_DEFAULT_ENVIRONMENT: {self.lam_default_environment!r} is not one of"
                f" LAM_ENVIRONMENTS ({', '.join(names)})"
            )
        return names

    def secrets(self) -> list[str]:
        """Every configured secret value, for redaction."""
        values = (
            self.slack_bot_token,
            self.slack_signing_secret,
            self.slack_app_token,
            self.openai_api_key,
            self.redis_url,
        )
        found = [value.get_secret_value() for value in values if value is not None]
        if self.redis_url is not None:
            # The password can surface alone (an error quoting the AUTH it sent).
            password = urlsplit(self.redis_url.get_secret_value()).password
            if password:
                found.append(unquote(password))
        return found


def load_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as error:
        first = error.errors()[0]
        raise ConfigError(f"invalid setting {describe_validation_error(first)}") from error
    settings.environments  # noqa: B018 -- validate the environment list at start-up
    return settings


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own spans lines)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())


class LamConfig(BaseModel):
    """``lam.yaml``: the connector instances this installation runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connectors: tuple[ConnectorConfig, ...] = (ConnectorConfig(type="shell", name="shell"),)


def load_config(path: Path | None) -> LamConfig:
    """Read ``lam.yaml``; with no path, the built-in connectors with their defaults."""
    if path is None:
        return LamConfig()
    try:
        raw = yaml.safe_load(path.expanduser().read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"LAM_CONFIG: cannot read {str(path)!r}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(
            f"LAM_CONFIG: {str(path)!r} is not valid YAML: {yaml_problem(error)}"
        ) from error
    try:
        return LamConfig.model_validate(raw or {})
    except ValidationError as error:
        problems = "; ".join(describe_validation_error(e) for e in error.errors())
        raise ConfigError(f"LAM_CONFIG: {str(path)!r}: {problems}") from error
