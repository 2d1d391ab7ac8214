"""MUSE's kernels and their torch references; ``assume_cuda`` makes "auto" model a GPU on fake tensors."""

from ._dispatch import assume_cuda, assumes_cuda

__all__ = ["assume_cuda", "assumes_cuda"]
