"""Training support: atomic checkpoints, optimizers and the LR schedule."""

from muse.train.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_file,
    read_meta,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from muse.train.optim import build_optimizer, build_scheduler, lr_lambda, param_groups

__all__ = [
    "CheckpointError",
    "build_optimizer",
    "build_scheduler",
    "load_checkpoint",
    "lr_lambda",
    "param_groups",
    "read_file",
    "read_meta",
    "resolve_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]
