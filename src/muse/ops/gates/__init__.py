"""Input gating of the semiseparable mixer (DESIGN.md §1.2): rank gates, u scale, log decays.

- ``naive``  (``naive_gate_inputs``): torch ops; the reference and the CPU path.
- ``triton`` (``triton_gate_inputs``): one kernel forward, one backward (CUDA, or the CPU
  interpreter under TRITON_INTERPRET=1).
- ``auto``   the kernels for CUDA tensors when Triton is installed (and for fake tensors under
  ``muse.ops.assume_cuda()``: the memory estimate's GPU step), else ``naive`` (with a one-time
  notice when Triton is missing on CUDA).

See ``naive_gate_inputs`` for shapes and results.
"""

from __future__ import annotations

from torch import Tensor

from muse.ops._dispatch import assumes_cuda, note_path
from muse.ops._triton import kernels_available

from .naive import naive_gate_inputs
from .triton_kernel import triton_gate_inputs

__all__ = ["IMPLS", "gate_inputs", "naive_gate_inputs", "triton_gate_inputs"]

IMPLS = ("auto", "triton", "naive")


def gate_inputs(u: Tensor, gate_logits: Tensor | None, decay_logits: Tensor | None, scale: float = 1.0,
                impl: str = "auto"):
    """(u_eff, log_decay, gate_sum, gate_open): see ``naive_gate_inputs``."""
    if impl not in IMPLS:
        raise ValueError(f"gate_inputs: impl must be one of {IMPLS}; got {impl!r}")
    if impl == "auto" and assumes_cuda(u) and kernels_available(u):
        impl = "triton"
    if impl == "triton":
        note_path("gate_inputs", "triton")
        return triton_gate_inputs(u, gate_logits, decay_logits, scale)
    note_path("gate_inputs", "naive")
    return naive_gate_inputs(u, gate_logits, decay_logits, scale)
