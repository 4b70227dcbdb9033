"""What is installed is exactly what was locked: every locked artifact carries its hash, which
`uv sync --frozen` (scripts/setup.sh) checks before installing it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_every_locked_artifact_has_a_sha256() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    unhashed = []
    for package in lock["package"]:
        if {"editable", "virtual"} & set(package.get("source", {})):
            continue  # this project itself
        artifacts = ([package["sdist"]] if "sdist" in package else []) + package.get("wheels", [])
        if not artifacts or not all(a.get("hash", "").startswith("sha256:") for a in artifacts):
            unhashed.append(package["name"])
    assert len(lock["package"]) > 100
    assert unhashed == []


def test_the_audit_workflow_audits_the_lock_with_hashes_required() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/dependency-audit.yml").read_text())
    commands = " ".join(step.get("run", "") for step in workflow["jobs"]["pip-audit"]["steps"])
    assert "uv export --frozen --all-extras" in commands
    assert "pip-audit" in commands and "--require-hashes" in commands and "--strict" in commands
