#!/usr/bin/env python3
"""Regenerate the configuration reference block in README.md from runner_agent.config.SETTINGS."""

from __future__ import annotations

from pathlib import Path

from runner_agent.config_reference import update_readme

if __name__ == "__main__":
    readme = Path(__file__).resolve().parents[1] / "README.md"
    print("README.md updated" if update_readme(readme) else "README.md already up to date")
