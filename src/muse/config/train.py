"""The data and training sections of a config: ``DataConfig`` (dataset, tokenizer, caches) and
``TrainConfig`` (budget, optimizer, precision, compile, CUDA graph, logging), with the tuples of
allowed values that the CLI and the memory profiler also read.

The CUDA-graph rules that depend only on training settings live here
(:meth:`TrainConfig.cuda_graph_conflict`); those that also need the model are in
:meth:`muse.config.Config.cuda_graph_conflict`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .checks import ConfigError, check_choice, check_positive

DATASETS = ("pystdlib", "wikitext-2", "wikitext-103")  # plus "text:PATH"
DATA_DIR_DATASETS = ("wikitext-2", "wikitext-103")  # the datasets that read data.data_dir


@dataclass
class DataConfig:
    dataset: str = "pystdlib"  # pystdlib | wikitext-2 | wikitext-103 | text:PATH
    data_dir: str | None = None  # local files for wikitext-*; None tries the Hugging Face hub
    tokenizer: str = "bpe"  # bpe (trained on the train split, vocab = model.vocab_size) | gpt2 | bytes
    tokenizer_dir: str | None = None  # gpt2: folder with encoder.json + vocab.bpe
    cache_dir: str = "~/.cache/muse"  # tokenized splits as numpy memmaps, keyed by source + tokenizer hash

    def __post_init__(self):
        if self.dataset not in DATASETS and not (self.dataset.startswith("text:") and len(self.dataset) > 5):
            raise ConfigError(f"data.dataset must be one of {', '.join(DATASETS)} or text:PATH; got {self.dataset!r}")
        check_choice("data.tokenizer", self.tokenizer, ("bpe", "gpt2", "bytes"))
        # a directory the dataset or tokenizer never reads would be ignored without a word
        if self.data_dir is not None and self.dataset not in DATA_DIR_DATASETS:
            raise ConfigError(
                f"data.data_dir (--data-dir) is only read by {' and '.join(DATA_DIR_DATASETS)}, and data.dataset is "
                f"{self.dataset}; for WikiText files add --dataset wikitext-2 (or wikitext-103), for your own text "
                f"use --dataset text:PATH instead"
            )
        if self.tokenizer_dir is not None and self.tokenizer != "gpt2":
            raise ConfigError(
                f"data.tokenizer_dir is only read by data.tokenizer gpt2, and data.tokenizer is {self.tokenizer}; "
                "add --data.tokenizer gpt2 or drop data.tokenizer_dir"
            )

    @staticmethod
    def saved(config: dict) -> dict:
        """A run's saved config (the whole mapping) as it validates today. Runs saved before the
        checks above may hold a data_dir (tokenizer_dir) their dataset (tokenizer) never read:
        it is dropped rather than refused, so those runs still resume, evaluate and generate."""
        data = config.get("data") if isinstance(config, dict) else None
        if not isinstance(data, dict):
            return config
        unread = {
            "data_dir": data.get("dataset", "pystdlib") not in DATA_DIR_DATASETS,
            "tokenizer_dir": data.get("tokenizer", "bpe") != "gpt2",
        }
        return {**config, "data": {k: None if unread.get(k) else v for k, v in data.items()}}


OPTIMIZERS = ("adamw", "adamw8bit", "adamw-offload")
CUDA_GRAPH_OPTIMIZERS = ("adamw", "adamw8bit")  # whose step can run inside a captured graph (muse.train.graph)
PRECISIONS = ("fp32", "bf16", "fp16", "bf16-pure")
PARALLEL = ("auto", "none", "ddp", "fsdp")  # muse.distributed.parallelize
_CUBLAS_WORKSPACE = re.compile(r"(:[0-9]+:[0-9]+)+")


def check_cublas_workspace(path: str, value: Any) -> None:
    """``default`` or a CUBLAS_WORKSPACE_CONFIG value: one or more ``:SIZE_KiB:COUNT`` groups."""
    if not (isinstance(value, str) and (value == "default" or _CUBLAS_WORKSPACE.fullmatch(value))):
        raise ConfigError(
            f"{path} must be 'default' or a CUBLAS_WORKSPACE_CONFIG value of ':SIZE_KiB:COUNT' groups "
            f"(e.g. ':4096:1', ':16:8', ':4096:2:16:8'); got {value!r}"
        )


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    out_dir: str = "runs"  # the run directory is OUT_DIR/NAME unless --run-dir is given
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 16  # sequences per micro-batch (per process)
    seq_len: int = 0  # 0 means model.max_seq_len
    grad_accum: int = 1
    # budget: training stops at the first limit reached; the LR schedule spans max_steps
    # (or the steps implied by max_tokens)
    max_steps: int = 1000
    max_tokens: int = 0  # 0: no token limit
    max_minutes: float = 0.0  # 0: no time limit
    # adamw (fused on CUDA) | adamw8bit (torchao) | adamw-offload (CUDA only: torchao's
    # CPUOffloadOptimizer, AdamW states and gradients in host memory, the update on the CPU)
    optimizer: str = "adamw"
    lr: float = 3e-3
    # learning-rate multiplier for the factors of factorised layers (low-rank A and B, TT cores):
    # their updates move the product W by a different amount than a dense weight's would
    factor_lr_scale: float = 1.0
    min_lr_ratio: float = 0.1  # cosine decays to lr · min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + loss scaling) | bf16-pure (bf16 params)
    compile: bool = False
    # torch.compile mode when compile is on: "default" | "reduce-overhead" (CUDA graphs: the host
    # launches nothing per kernel, for launch-bound small models) | "max-autotune-no-cudagraphs"
    compile_mode: str = "default"
    # capture the whole training step (forward, backward, clipping, the optimizer) as one CUDA
    # graph after a few eager warm-up steps and replay it: the host then launches one graph per
    # step instead of hundreds of kernels (muse.train.graph). auto: on where the step can be
    # captured (one CUDA device, adamw or adamw8bit, not fp16, no compile_mode with CUDA graphs
    # of its own, no host-syncing model path), off elsewhere, and the trainer logs which and why |
    # true: capture or fail with the reason | false: never
    cuda_graph: bool | str = "auto"
    eval_every: int = 100
    eval_tokens: int = 65536  # validation tokens per periodic evaluation (0 = whole split)
    log_every: int = 10
    tensorboard: bool = True
    wandb: bool = False
    progress: bool = True
    # cuBLAS workspace per (handle, stream), process-wide: "default" leaves torch's choice (32 MiB on
    # Hopper) or an exported CUBLAS_WORKSPACE_CONFIG alone; ":SIZE_KiB:COUNT" groups (":4096:1",
    # ":16:8") set CUBLAS_WORKSPACE_CONFIG before the first CUDA use (muse.runtime.apply_cublas_workspace)
    cublas_workspace: str = "default"
    # data parallelism over the processes of a torchrun launch (muse.distributed): auto (ddp when
    # there are several processes) | none | ddp (replicated model, all-reduced gradients) | fsdp
    # (FSDP2: parameters, gradients and optimizer states sharded per block; sharded DCP checkpoints)
    parallel: str = "auto"

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "eval_every", "log_every"):
            check_positive(f"train.{name}", getattr(self, name))
        for name in ("seq_len", "max_steps", "max_tokens", "warmup_steps", "eval_tokens", "seed"):
            check_positive(f"train.{name}", getattr(self, name), allow_zero=True)
        if not self.max_steps and not self.max_tokens and not self.max_minutes:
            raise ConfigError("set at least one budget: train.max_steps, train.max_tokens or train.max_minutes")
        if not self.max_minutes >= 0:
            raise ConfigError(f"train.max_minutes must be >= 0; got {self.max_minutes!r}")
        check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        check_choice("train.precision", self.precision, PRECISIONS)
        check_choice("train.compile_mode", self.compile_mode, COMPILE_MODES)
        check_choice("train.parallel", self.parallel, PARALLEL)
        if self.parallel == "fsdp" and (conflict := self.fsdp_conflict()):
            raise ConfigError(conflict)
        if self.optimizer == "adamw-offload":
            if self.grad_accum > 1:
                raise ConfigError(
                    f"train.grad_accum must be 1 with train.optimizer adamw-offload; got {self.grad_accum} "
                    "(each gradient moves to the CPU and leaves the GPU as soon as backward produces it, so a "
                    "second micro-batch would replace it, not add to it): raise train.batch_size instead"
                )
            if self.precision == "fp16":
                raise ConfigError(
                    "train.precision fp16 (loss scaling) does not combine with train.optimizer adamw-offload; "
                    "use bf16 or bf16-pure"
                )
        if not (isinstance(self.cuda_graph, bool) or self.cuda_graph == "auto"):
            raise ConfigError(f"train.cuda_graph must be auto, true or false; got {self.cuda_graph!r}")
        if self.cuda_graph is True and (conflict := self.cuda_graph_conflict()):
            raise ConfigError(conflict[1])
        check_cublas_workspace("train.cublas_workspace", self.cublas_workspace)
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0; got {self.lr!r}")
        if not (isinstance(self.factor_lr_scale, (int, float)) and self.factor_lr_scale > 0):
            raise ConfigError(f"train.factor_lr_scale must be > 0; got {self.factor_lr_scale!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio must be in [0, 1]; got {self.min_lr_ratio!r}")
        for name in ("weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"train.{name} must be >= 0; got {getattr(self, name)!r}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be in [0, 1); got {getattr(self, name)!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N; got {self.device!r}")


    def fsdp_conflict(self) -> str | None:
        """Why these settings cannot train under ``parallel: fsdp``, or None."""
        if self.optimizer == "adamw-offload":
            return (
                "train.optimizer adamw-offload does not combine with train.parallel fsdp (torchao's "
                "CPUOffloadOptimizer needs whole local tensors, FSDP2 shards them into DTensors); use adamw or "
                "adamw8bit, whose states FSDP shards across the processes"
            )
        if self.precision == "fp16":
            return (
                "train.precision fp16 (loss scaling) does not combine with train.parallel fsdp; use bf16 (FSDP2 "
                "then keeps fp32 sharded parameters, computes in bf16 and reduces gradients in fp32) or bf16-pure"
            )
        return None

    def cuda_graph_conflict(self) -> tuple[str, str] | None:
        """Why this training setup cannot be captured as a CUDA graph (``cuda_graph``), as (the
        short reason that ``auto`` logs, the error that ``true`` raises), or None. The model's
        part is :meth:`Config.cuda_graph_conflict`; the device's, the trainer's."""
        if self.device == "cpu":
            return "device cpu", "train.cuda_graph captures CUDA graphs; it needs train.device auto, cuda or cuda:N"
        if self.optimizer not in CUDA_GRAPH_OPTIMIZERS:
            return (
                f"optimizer {self.optimizer} (its update runs on the CPU)",
                f"train.cuda_graph needs train.optimizer adamw or adamw8bit (their steps run inside the graph); got "
                f"{self.optimizer!r}",
            )
        if self.precision == "fp16":
            return (
                "precision fp16 (loss scaling reads a flag on the host every step)",
                "train.cuda_graph does not combine with train.precision fp16 (loss scaling reads a flag on the "
                "host every step); use bf16, bf16-pure or fp32",
            )
        if self.parallel == "fsdp":
            return (
                "parallel fsdp (its hooks gather and scatter parameters on the host's schedule)",
                "train.cuda_graph does not combine with train.parallel fsdp; use ddp or none",
            )
        if self.compile and self.compile_mode == "reduce-overhead":
            return (
                "compile_mode reduce-overhead (CUDA graphs of its own)",
                "train.cuda_graph captures the whole step itself; with train.compile use compile_mode 'default' "
                "or 'max-autotune-no-cudagraphs', not 'reduce-overhead' (CUDA graphs of its own)",
            )
        return None
