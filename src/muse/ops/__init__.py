"""MUSE's kernels and their torch references; ``assume_cuda`` makes "auto" model a GPU on fake tensors,
``record_paths`` reports which implementation each op ran; ``activation_checkpoint`` is the one
checkpointing wrapper; ``autocast_once`` casts an input that several projections read once."""

from ._cast import autocast_once
from ._checkpoint import activation_checkpoint
from ._dispatch import assume_cuda, assumes_cuda, record_paths

__all__ = ["activation_checkpoint", "autocast_once", "assume_cuda", "assumes_cuda", "record_paths"]
