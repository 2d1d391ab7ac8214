"""Typed configuration for MUSE models.

Every YAML key is a dataclass field name; every value is validated in ``__post_init__`` with a
message that names the field and the allowed values. This module must not import torch so that
configs can be read, checked and printed on any machine in milliseconds.

Presets live in ``configs/*.yaml`` and may inherit from one another with ``extends: NAME``.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value, key or file is invalid. The message names the offending field."""


def _check_choice(path: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{path} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _check_positive(path: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ConfigError(f"{path} must be a {'non-negative' if allow_zero else 'positive'} integer; got {value!r}")


LINEAR_KINDS = ("dense", "lowrank", "tt")


@dataclass
class LinearConfig:
    """How a projection is parameterised: dense, low-rank (W = A·B) or tensor-train."""

    kind: str = "dense"
    rank: int = 0  # rank of A·B, or the TT bond rank; unused for dense
    bias: bool = True

    def __post_init__(self):
        _check_choice("linear.kind", self.kind, LINEAR_KINDS)
        _check_positive("linear.rank", self.rank, allow_zero=True)
        if self.kind != "dense" and self.rank < 1:
            raise ConfigError(f"linear.rank must be >= 1 when linear.kind is {self.kind!r}; got {self.rank}")


@dataclass
class EmbeddingConfig:
    kind: str = "dense"  # dense | lowrank | tt
    rank: int = 16  # low-rank r, or TT bond rank
    num_cores: int | None = None  # TT cores (2..4); None picks from V and d
    vocab_factors: list[int] | None = None  # override the automatic mixed radix of V
    dim_factors: list[int] | None = None  # override the factorisation of d
    phase: str = "none"  # none | cos | complex ("holographic" bond phases, TT only)
    # TT row gather: auto (the fused Triton kernel on CUDA when it fits, torch otherwise) |
    # triton (always the kernel; CUDA only) | torch (the chunked torch contraction)
    gather_impl: str = "auto"

    def __post_init__(self):
        _check_choice("embedding.kind", self.kind, ("dense", "lowrank", "tt"))
        _check_positive("embedding.rank", self.rank)
        _check_choice("embedding.phase", self.phase, ("none", "cos", "complex"))
        _check_choice("embedding.gather_impl", self.gather_impl, ("auto", "triton", "torch"))
        if self.phase != "none" and self.kind != "tt":
            raise ConfigError("embedding.phase applies only to embedding.kind 'tt'")
        if self.gather_impl != "auto" and self.kind != "tt":
            raise ConfigError("embedding.gather_impl applies only to embedding.kind 'tt'")
        if self.gather_impl == "triton" and self.phase == "complex":
            raise ConfigError(
                "embedding.gather_impl 'triton' needs real cores; phase 'complex' runs on 'torch' or 'auto'"
            )
        if self.num_cores is not None and self.num_cores not in (2, 3, 4):
            raise ConfigError(f"embedding.num_cores must be 2, 3, 4 or null; got {self.num_cores!r}")
        for name in ("vocab_factors", "dim_factors"):
            f = getattr(self, name)
            if f is not None:
                if not (2 <= len(f) <= 4) or any(not isinstance(x, int) or x < 1 for x in f):
                    raise ConfigError(f"embedding.{name} must be 2-4 positive integers; got {f!r}")
                if self.num_cores is not None and len(f) != self.num_cores:
                    raise ConfigError(f"embedding.{name} has {len(f)} factors but embedding.num_cores is {self.num_cores}")
        if self.vocab_factors and self.dim_factors and len(self.vocab_factors) != len(self.dim_factors):
            raise ConfigError("embedding.vocab_factors and embedding.dim_factors must have the same length")


@dataclass
class AttentionConfig:
    """Causal softmax attention through ``F.scaled_dot_product_attention``."""

    rope_base: float = 10000.0  # used when model.positions is 'rope'

    def __post_init__(self):
        if not self.rope_base > 1:
            raise ConfigError(f"mixer.attention.rope_base must be > 1; got {self.rope_base!r}")


SCAN_IMPLS = ("auto", "triton", "chunked", "quadratic", "recurrent")


@dataclass
class SemiseparableConfig:
    """Adaptive-rank semiseparable mixer (DESIGN.md §1.2)."""

    max_rank: int = 16  # r: per-head rank of the U·Vᵀ part
    min_rank: int = 1  # first min_rank gates are fixed open
    gates: bool = True  # adaptive rank gates g = σ(x W_g) on the ranks above min_rank
    gate_l1: float = 1e-3  # λ of the L1 penalty λ·mean(g) returned as auxiliary loss
    uv_norm: str = "scale"  # scale: u, v ← u/√r, v/√r ; l2: L2-normalise u and v per head
    decay: str = "data"  # none | fixed (learned per-head constant) | data (per token, per head)
    band_width: int = 3  # width w of the causal local band T (depthwise conv); 0 disables it
    head_norm: bool = True  # RMS-normalise each head's output before W_o
    value_proj: str = "linear"  # linear (W_z from mixer.linear) | identity
    out_proj: str = "linear"  # linear (W_o from mixer.linear) | identity
    # auto: the Triton kernel on CUDA (fp32/bf16/fp16), the torch chunked scan elsewhere |
    # triton (CUDA only) | chunked | quadratic (reference, O(N²)) | recurrent
    impl: str = "auto"
    chunk_size: int = 64

    def __post_init__(self):
        p = "mixer.semiseparable"
        _check_positive(f"{p}.max_rank", self.max_rank)
        _check_positive(f"{p}.min_rank", self.min_rank, allow_zero=True)
        if self.min_rank > self.max_rank:
            raise ConfigError(f"{p}.min_rank ({self.min_rank}) must be <= {p}.max_rank ({self.max_rank})")
        if not self.gate_l1 >= 0:
            raise ConfigError(f"{p}.gate_l1 must be >= 0; got {self.gate_l1!r}")
        _check_choice(f"{p}.uv_norm", self.uv_norm, ("scale", "l2"))
        _check_choice(f"{p}.decay", self.decay, ("none", "fixed", "data"))
        _check_positive(f"{p}.band_width", self.band_width, allow_zero=True)
        _check_choice(f"{p}.value_proj", self.value_proj, ("linear", "identity"))
        _check_choice(f"{p}.out_proj", self.out_proj, ("linear", "identity"))
        _check_choice(f"{p}.impl", self.impl, SCAN_IMPLS)
        _check_positive(f"{p}.chunk_size", self.chunk_size)


HOLOGRAPHIC_IMPLS = ("auto", "triton", "chunked", "quadratic", "recurrent")  # muse.ops.holographic.IMPLS


@dataclass
class HolographicConfig:
    """Holographic associative-memory mixer ("HAMT", DESIGN.md §1.5)."""

    hcm_dim: int = 256  # D: width of keys, values, queries and of each memory slot
    num_slots: int = 16  # S: memory slots, each with its own learned decay γ_j
    # initial decays: 1 − γ log-spaced from 1 − decay_min (the fastest slot, memory ~1/(1 − γ)
    # tokens) to 1 − decay_max (the slowest); γ is learned and stays in (0, 1) (a sigmoid)
    decay_min: float = 0.5
    decay_max: float = 0.999
    aux_weight: float = 0.1  # λ_aux of the reconstruction loss 1 − cos(unbind(memory, k_t), v_t)
    unitary: bool = True  # unit-modulus keys and queries per frequency: exact, stable unbinding
    out_norm: bool = True  # RMS-normalise the read before W_o (its scale grows with the slots' memory length)
    # auto: the Triton scan on CUDA (chunk a power of two in [16, 128]), the torch chunked scan
    # elsewhere | triton (CUDA only) | chunked | quadratic (reference, O(N²)) | recurrent
    impl: str = "auto"
    chunk_size: int = 64

    def __post_init__(self):
        p = "mixer.holographic"
        _check_positive(f"{p}.hcm_dim", self.hcm_dim)
        _check_positive(f"{p}.num_slots", self.num_slots)
        for name in ("decay_min", "decay_max"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{p}.{name} must lie in (0, 1); got {getattr(self, name)!r}")
        if self.decay_min > self.decay_max:
            raise ConfigError(f"{p}.decay_min ({self.decay_min}) must be <= {p}.decay_max ({self.decay_max})")
        if not self.aux_weight >= 0:
            raise ConfigError(f"{p}.aux_weight must be >= 0; got {self.aux_weight!r}")
        _check_choice(f"{p}.impl", self.impl, HOLOGRAPHIC_IMPLS)
        _check_positive(f"{p}.chunk_size", self.chunk_size)


MIXER_KINDS = ("attention", "semiseparable", "holographic")


@dataclass
class MixerConfig:
    kind: str = "attention"
    linear: LinearConfig = field(default_factory=LinearConfig)  # every projection of the mixer
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    semiseparable: SemiseparableConfig = field(default_factory=SemiseparableConfig)
    holographic: HolographicConfig = field(default_factory=HolographicConfig)

    def __post_init__(self):
        _check_choice("mixer.kind", self.kind, MIXER_KINDS)


FFN_IMPLS = ("auto", "triton", "torch")  # muse.ops.lowrank_mlp.IMPLS (no torch import here)


@dataclass
class FFNConfig:
    kind: str = "dense"  # dense | lowrank | tt
    mult: float = 4.0  # hidden = round(mult · d)
    activation: str = "gelu"  # gelu | swiglu
    rank: int = 0  # low-rank r or TT rank (DESIGN: standard r = d/16, ultra r = d/64)
    bias: bool = True
    # Tokens per chunk of the sequence-chunked FFN (0: off). The (T, mult·d) hidden activations
    # then exist for one chunk at a time, in the forward and (with gradients, through a per-chunk
    # activation checkpoint) in the backward, at the cost of one more FFN forward per step.
    token_chunk: int = 0
    # Low-rank GELU FFN core (gelu(x·A1·B1 + b1)·A2): triton (the fused kernel; CUDA or the
    # interpreter), which never stores the (T, mult·d) activations and recomputes them in the
    # backward | torch (plain ops) | auto (triton on CUDA, torch elsewhere; muse.ops.lowrank_mlp).
    # Other FFNs ignore it, and token_chunk is not applied where the kernel runs (it already
    # stores no hidden activation).
    impl: str = "auto"

    def __post_init__(self):
        _check_choice("ffn.kind", self.kind, LINEAR_KINDS)
        _check_choice("ffn.impl", self.impl, FFN_IMPLS)
        _check_positive("ffn.token_chunk", self.token_chunk, allow_zero=True)
        _check_choice("ffn.activation", self.activation, ("gelu", "swiglu"))
        if not self.mult > 0:
            raise ConfigError(f"ffn.mult must be > 0; got {self.mult!r}")
        _check_positive("ffn.rank", self.rank, allow_zero=True)
        if self.kind != "dense" and self.rank < 1:
            raise ConfigError(f"ffn.rank must be >= 1 when ffn.kind is {self.kind!r}; got {self.rank}")

    def linear(self) -> LinearConfig:
        return LinearConfig(kind=self.kind, rank=self.rank, bias=self.bias)


LOSS_IMPLS = ("auto", "fused", "chunked")


@dataclass
class HeadConfig:
    kind: str = "dense"  # dense | tied (shares the embedding) | lowrank (d→r→V) | tt
    rank: int = 0
    bias: bool = False
    loss_chunk: int = 2048  # tokens per chunk of the recomputed (chunked) cross-entropy
    # auto: the fused linear + cross-entropy kernels on CUDA where the head ends in a plain
    # matrix (dense, lowrank, tied to a dense embedding), else chunked | fused | chunked
    loss_impl: str = "auto"

    def __post_init__(self):
        _check_choice("head.kind", self.kind, ("dense", "tied", "lowrank", "tt"))
        _check_choice("head.loss_impl", self.loss_impl, LOSS_IMPLS)
        _check_positive("head.rank", self.rank, allow_zero=True)
        if self.kind in ("lowrank", "tt") and self.rank < 1:
            raise ConfigError(f"head.rank must be >= 1 when head.kind is {self.kind!r}; got {self.rank}")
        if self.kind == "tied" and self.bias:
            raise ConfigError("head.bias must be false when head.kind is 'tied'")
        _check_positive("head.loss_chunk", self.loss_chunk)


@dataclass
class NormConfig:
    kind: str = "layernorm"  # layernorm | rmsnorm
    eps: float = 1e-5
    shared: bool = False  # one pre-mixer and one pre-FFN norm shared by all blocks

    def __post_init__(self):
        _check_choice("norm.kind", self.kind, ("layernorm", "rmsnorm"))
        if not self.eps > 0:
            raise ConfigError(f"norm.eps must be > 0; got {self.eps!r}")


MODEL_KINDS = ("muse", "hf-gpt2")


def hf_gpt2_conflicts(m: ModelConfig) -> list[str]:
    """The fields of ``m`` that transformers' ``GPT2LMHeadModel`` cannot express (model.kind
    hf-gpt2), each as "field value (needs X)"; empty when the config is a GPT-2 shape."""
    checks = [
        ("embedding.kind", m.embedding.kind, ("dense",)),
        ("mixer.kind", m.mixer.kind, ("attention",)),
        ("mixer.linear.kind", m.mixer.linear.kind, ("dense",)),
        ("mixer.linear.bias", m.mixer.linear.bias, (True,)),  # GPT-2's c_attn and c_proj have biases
        ("model.positions", m.positions, ("learned",)),
        ("norm.kind", m.norm.kind, ("layernorm",)),
        ("norm.shared", m.norm.shared, (False,)),
        ("ffn.kind", m.ffn.kind, ("dense",)),
        ("ffn.activation", m.ffn.activation, ("gelu",)),
        ("ffn.bias", m.ffn.bias, (True,)),
        ("ffn.token_chunk", m.ffn.token_chunk, (0,)),
        ("head.kind", m.head.kind, ("dense", "tied")),
        ("head.bias", m.head.bias, (False,)),  # GPT-2's lm_head has no bias
        # the transformers model's own logits and one cross-entropy: no fused or chunked MUSE loss
        ("head.loss_impl", m.head.loss_impl, ("auto",)),
    ]
    fmt = lambda v: str(v).lower() if isinstance(v, bool) else repr(v)
    return [f"{k} {fmt(v)} (needs {' or '.join(map(fmt, ok))})" for k, v, ok in checks if v not in ok]


@dataclass
class ModelConfig:
    # muse: MuseLM, assembled from the parts below | hf-gpt2: transformers' GPT2LMHeadModel of the
    # same shape (vocab, d, layers, heads, max_seq_len, ffn.mult, dropout, norm.eps, init_std, tied
    # or dense head), built from scratch: the external reference (needs the hf extra)
    kind: str = "muse"
    vocab_size: int = 4096
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    max_seq_len: int = 256
    positions: str = "learned"  # learned (GPT-2 table) | rope (attention only) | none
    dropout: float = 0.0
    init_std: float = 0.02
    checkpointing: bool = False  # activation checkpointing per block
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    mixer: MixerConfig = field(default_factory=MixerConfig)
    ffn: FFNConfig = field(default_factory=FFNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    norm: NormConfig = field(default_factory=NormConfig)

    def __post_init__(self):
        _check_choice("model.kind", self.kind, MODEL_KINDS)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            _check_positive(f"model.{name}", getattr(self, name))
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        _check_choice("model.positions", self.positions, ("learned", "rope", "none"))
        if self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise ConfigError("model.positions 'rope' needs an even head dimension (d_model / n_heads)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1); got {self.dropout!r}")
        if not self.init_std > 0:
            raise ConfigError(f"model.init_std must be > 0; got {self.init_std!r}")
        if self.embedding.kind == "dense" and self.embedding.phase != "none":
            raise ConfigError("embedding.phase applies only to embedding.kind 'tt'")
        if self.head.loss_impl == "fused" and (
            self.head.kind == "tt" or (self.head.kind == "tied" and self.embedding.kind != "dense")
        ):
            what = "tt" if self.head.kind == "tt" else f"tied to a {self.embedding.kind} embedding"
            raise ConfigError(
                f"head.loss_impl 'fused' needs a head ending in a plain matrix (dense, lowrank, or tied to a "
                f"dense embedding); this head is {what}: use head.loss_impl 'auto' or 'chunked'"
            )
        if self.kind == "hf-gpt2" and (bad := hf_gpt2_conflicts(self)):
            raise ConfigError(
                f"model.kind hf-gpt2 (transformers' GPT2LMHeadModel) cannot apply {'; '.join(bad)}; "
                "set those fields or use model.kind muse"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


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
        _check_choice("data.tokenizer", self.tokenizer, ("bpe", "gpt2", "bytes"))
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

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "eval_every", "log_every"):
            _check_positive(f"train.{name}", getattr(self, name))
        for name in ("seq_len", "max_steps", "max_tokens", "warmup_steps", "eval_tokens", "seed"):
            _check_positive(f"train.{name}", getattr(self, name), allow_zero=True)
        if not self.max_steps and not self.max_tokens and not self.max_minutes:
            raise ConfigError("set at least one budget: train.max_steps, train.max_tokens or train.max_minutes")
        if not self.max_minutes >= 0:
            raise ConfigError(f"train.max_minutes must be >= 0; got {self.max_minutes!r}")
        _check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("train.precision", self.precision, PRECISIONS)
        _check_choice("train.compile_mode", self.compile_mode, COMPILE_MODES)
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
        if self.compile and self.compile_mode == "reduce-overhead":
            return (
                "compile_mode reduce-overhead (CUDA graphs of its own)",
                "train.cuda_graph captures the whole step itself; with train.compile use compile_mode 'default' "
                "or 'max-autotune-no-cudagraphs', not 'reduce-overhead' (CUDA graphs of its own)",
            )
        return None


@dataclass
class Config:
    """Top-level config: what a preset YAML holds."""

    name: str = "custom"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.train.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"train.seq_len ({self.train.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})"
            )
        if self.train.cuda_graph is True and (conflict := self.cuda_graph_conflict()):
            raise ConfigError(conflict[1])

    def cuda_graph_conflict(self) -> tuple[str, str] | None:
        """:meth:`TrainConfig.cuda_graph_conflict`, and the model paths that read device values on the
        host during a step (a capture refuses those): (short reason, error), or None."""
        if conflict := self.train.cuda_graph_conflict():
            return conflict
        m, emb = self.model, self.model.embedding
        if m.kind == "hf-gpt2":
            return (
                "model.kind hf-gpt2 (capturing the transformers model's step is not verified)",
                "train.cuda_graph true does not combine with model.kind hf-gpt2 (capturing the transformers "
                "model's step is not verified); set train.cuda_graph auto or false",
            )
        if m.checkpointing and m.dropout > 0:
            return (
                "activation checkpointing with dropout (saves and restores the CUDA RNG state on the host)",
                "train.cuda_graph does not combine model.checkpointing with model.dropout > 0 (each checkpointed "
                "block saves and restores the CUDA RNG state on the host to replay its dropout); turn one of them "
                "off, or set train.cuda_graph auto or false",
            )
        if emb.kind == "tt" and (emb.gather_impl == "torch" or emb.phase == "complex"):
            what, fix = (("embedding.gather_impl torch", "use embedding.gather_impl auto or triton")
                         if emb.gather_impl == "torch" else ("embedding.phase complex", "use phase none or cos"))
            return (
                f"{what}: the torch TT row gather deduplicates ids on the host",
                f"train.cuda_graph does not combine with {what} (the torch TT row gather deduplicates the batch's "
                f"ids with torch.unique, a host sync); {fix}, or set train.cuda_graph auto or false",
            )
        return None

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model.max_seq_len


# ----------------------------------------------------------------------------- dict <-> dataclass


def _unwrap_optional(tp):
    """``int | None`` -> (int, True); other types -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(path: str, tp, value):
    """Check a YAML/CLI value against a field type (ints stay ints; bools are not ints)."""
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path} may not be null")
    if dataclasses.is_dataclass(base):
        return from_dict(base, value, path)
    if typing.get_origin(base) in (typing.Union, types.UnionType):  # e.g. bool | str: the first that fits
        for member in typing.get_args(base):
            try:
                return _coerce(path, member, value)
            except ConfigError:
                pass
        names = " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(base))
        raise ConfigError(f"{path} must be of type {names}; got {value!r}")
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, str):
            return value
    elif typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        if isinstance(value, (list, tuple)):
            return [_coerce(f"{path}[{i}]", item, v) for i, v in enumerate(value)]
    else:  # pragma: no cover - only reached if a new field type is added without support here
        raise ConfigError(f"{path}: unsupported field type {tp!r}")
    raise ConfigError(f"{path} must be of type {getattr(base, '__name__', base)}; got {value!r}")


def from_dict(cls, data: Any, path: str = ""):
    """Build dataclass ``cls`` from a nested dict; unknown keys name the valid ones."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__} must be a mapping; got {data!r}")
    hints = field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {where!r}; valid keys{' under ' + path if path else ''}: {', '.join(names)}")
        kwargs[key] = _coerce(where, hints[key], value)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{path or cls.__name__}: {e}") from None


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def flat_keys(cls, prefix: str = "") -> dict[str, Any]:
    """All leaf keys of a dataclass as dotted paths -> type (used to derive the CLI)."""
    out = {}
    for f in dataclasses.fields(cls):
        tp = field_types(cls)[f.name]
        base, _ = _unwrap_optional(tp)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(base):
            out.update(flat_keys(base, key + "."))
        else:
            out[key] = tp
    return out


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def set_dotted(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


# ----------------------------------------------------------------------------- presets


def preset_dirs() -> list[Path]:
    """Installed wheels carry the presets inside the package; a source checkout has them at the root."""
    here = Path(__file__).resolve().parent
    return [p for p in (here / "configs", here.parents[1] / "configs") if p.is_dir()]


def list_presets() -> list[str]:
    names = set()
    for d in preset_dirs():
        names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def _find_preset(name: str) -> Path:
    for d in preset_dirs():
        p = d / f"{name}.yaml"
        if p.is_file():
            return p
    raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(list_presets())}")


def load_raw(name_or_path: str | Path, _seen: tuple = ()) -> dict:
    """Read a preset name or YAML path into a dict, resolving ``extends`` chains."""
    s = str(name_or_path)
    path = Path(s) if (s.endswith((".yaml", ".yml")) or "/" in s) else _find_preset(s)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"circular 'extends' in {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    own_name = data.get("name")
    parent = data.pop("extends", None)
    if parent is not None:
        data = deep_merge(load_raw(parent, _seen + (path.resolve(),)), data)
    data["name"] = own_name or path.stem  # an inheriting preset is never named after its parent
    return data


def load_config(name_or_path: str | Path = "tiny", overrides: dict | None = None) -> Config:
    """Load a preset by name (``configs/NAME.yaml``) or a YAML file, then apply dotted overrides."""
    data = load_raw(name_or_path)
    for k, v in (overrides or {}).items():
        set_dotted(data, k, v)
    return from_dict(Config, data)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
