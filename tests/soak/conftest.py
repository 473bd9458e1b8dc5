"""Soak fixtures: the busybox OCI layout every soak job runs in (``file://`` registry)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.images import busybox_layout


@pytest.fixture(scope="session")
def soak_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    dest = tmp_path_factory.mktemp("soak-layout") / "layout"
    return dest, busybox_layout(dest)
