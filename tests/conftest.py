"""Shared fixtures. Real data comes from ../shared/data (see its SOURCES.txt); nothing downloads."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDGECLF_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test data missing: {path} (set EDGECLF_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def mnist_dir(shared_data) -> Path:
    return _need(shared_data / "mnist")


@pytest.fixture(scope="session")
def fashion_dir(shared_data) -> Path:
    return _need(shared_data / "fashion-mnist")
