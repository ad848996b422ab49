"""Shared helpers for the control-plane tests: the shop example as text, small manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodemesh.controlplane.client import read_manifests

SHOP = Path(__file__).parents[2] / "examples" / "shop"


@pytest.fixture
def shop() -> list[tuple[str, str]]:
    return read_manifests([str(SHOP)])
