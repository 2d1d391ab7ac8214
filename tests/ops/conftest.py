"""Fixtures that make the ops' dispatch see another machine: no Triton, or no interpreter."""

from __future__ import annotations

import sys

import pytest


def _patch_everywhere(monkeypatch, name: str, value) -> None:
    """Set ``name`` in every loaded MUSE module that has it (modules import it by name)."""
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("muse.") and mod is not None and hasattr(mod, name):
            monkeypatch.setattr(mod, name, value)


@pytest.fixture
def not_interpreting(monkeypatch):
    """``interpreting()`` is False everywhere, as on a GPU machine (the kernels defined under the
    interpreter stay as they are)."""
    _patch_everywhere(monkeypatch, "interpreting", lambda: False)


@pytest.fixture
def no_triton(monkeypatch):
    """``HAS_TRITON`` is False everywhere, as on an install without Triton; the one-time notice
    is re-armed for the test."""
    from muse.ops import _triton

    _patch_everywhere(monkeypatch, "HAS_TRITON", False)
    monkeypatch.setattr(_triton, "_noticed", False)
