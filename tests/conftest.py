"""Shared fixtures: where the shared reference samples live."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT.parent / "shared" / "reference" / "samples").glob("*.cf"))


@pytest.fixture(scope="session")
def samples() -> list[Path]:
    assert SAMPLES, "the shared reference samples are missing (../shared/reference/samples)"
    return SAMPLES
