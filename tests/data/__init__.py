"""Tests of muse.data. Real data comes from the shared folder next to the repository."""

from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA


def shared(sub: str) -> Path:
    """Path of ``shared/data/<sub>``; skips the test when that data is not on this machine."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"shared data {path} is absent (see DESIGN.md §1.9)")
    return path
