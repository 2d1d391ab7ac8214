"""What every config section shares: the error type and the two checks most fields use.

A module of its own so that the sections (``model.py``, ``train.py``) and the loader
(``presets.py``) all import it without importing one another.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value, key or file is invalid. The message names the offending field."""


def check_choice(path: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{path} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def check_positive(path: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{path} must be a {'non-negative' if allow_zero else 'positive'} integer; got {value!r}")
