"""Sequence mixers, chosen from a registry by ``mixer.kind``."""

from muse.mixers.base import MIXERS, Mixer, build_mixer, register_mixer
from muse.mixers import attention, holographic, semiseparable  # noqa: F401  (registration)

__all__ = ["MIXERS", "Mixer", "build_mixer", "register_mixer"]
