"""Activation checkpointing for MUSE's blocks, FFN chunks and loss chunks (one wrapper for all)."""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import _get_current_function_mode_stack
from torch.utils.checkpoint import checkpoint

__all__ = ["activation_checkpoint"]


def activation_checkpoint(fn, *args, **kwargs):
    """``torch.utils.checkpoint`` (non-reentrant) of ``fn(*args)``, whose recomputation runs under
    the torch-function modes the forward ran under.

    Autograd's engine runs the recomputation without them, so a mode that changes what a function
    does (``muse memory``'s estimate models a CUDA step with one,
    ``muse.memory.cuda_policy.CudaStepPolicy``) recomputed a different graph, and checkpoint
    refuses a recomputation that saves other tensors than the forward. Compiled code takes the
    plain call (dynamo checkpoints by itself; no mode is active there)."""
    modes = [] if torch.compiler.is_compiling() else _get_current_function_mode_stack()
    if not modes:
        return checkpoint(fn, *args, use_reentrant=False, **kwargs)

    @contextlib.contextmanager
    def under_modes():
        with contextlib.ExitStack() as stack:
            for mode in modes:
                stack.enter_context(mode)
            yield

    return checkpoint(fn, *args, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), under_modes()),
                      **kwargs)
