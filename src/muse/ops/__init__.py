"""MUSE's kernels and their torch references; ``assume_cuda`` makes "auto" model a GPU on fake tensors
(``fake``: is this one, also inside compiled code), ``record_paths`` reports which implementation
each op ran."""

from ._dispatch import assume_cuda, assumes_cuda, fake, record_paths

__all__ = ["assume_cuda", "assumes_cuda", "fake", "record_paths"]
