"""Shared pytest fixtures: where the wire samples in ../shared/fixtures live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    """The shared wire-sample folder (``../shared/fixtures`` beside the repository)."""
    override = os.environ.get("RUNNER_AGENT_FIXTURES")
    if override:
        return Path(override)
    return REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    path = fixtures_dir()
    assert path.is_dir(), f"shared wire fixtures not found at {path}"
    return path
