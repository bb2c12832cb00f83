"""Policy directories for the tests: the shipped Casbin model with the test's own rules."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHIPPED_POLICIES = REPO / "policies"
"""The policy directory LAM ships: ``model.conf`` and the example ``policy.csv``."""


def write_policy(directory: Path, rules: str) -> Path:
    """``directory`` holding the shipped ``model.conf`` and ``rules`` as its ``policy.csv``."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED_POLICIES / "model.conf", directory / "model.conf")
    (directory / "policy.csv").write_text(rules, encoding="utf-8")
    return directory
