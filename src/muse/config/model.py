"""The model sections of a config: ``ModelConfig`` and the parts it nests (embedding, mixer with
its attention / semiseparable / holographic settings, FFN, head, norm), and the check of which
configs transformers' GPT-2 can express (model.kind hf-gpt2).

The ``*_IMPLS`` tuples mirror the ops' own lists; they are repeated here rather than imported
because importing an op imports torch, and configs must load without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .checks import ConfigError, check_choice, check_positive

LINEAR_KINDS = ("dense", "lowrank", "tt")


@dataclass
class LinearConfig:
    """How a projection is parameterised: dense, low-rank (W = A·B) or tensor-train."""

    kind: str = "dense"
    rank: int = 0  # rank of A·B, or the TT bond rank; unused for dense
    bias: bool = True

    def __post_init__(self):
        check_choice("linear.kind", self.kind, LINEAR_KINDS)
        check_positive("linear.rank", self.rank, allow_zero=True)
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
        check_choice("embedding.kind", self.kind, ("dense", "lowrank", "tt"))
        check_positive("embedding.rank", self.rank)
        check_choice("embedding.phase", self.phase, ("none", "cos", "complex"))
        check_choice("embedding.gather_impl", self.gather_impl, ("auto", "triton", "torch"))
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
        check_positive(f"{p}.max_rank", self.max_rank)
        check_positive(f"{p}.min_rank", self.min_rank, allow_zero=True)
        if self.min_rank > self.max_rank:
            raise ConfigError(f"{p}.min_rank ({self.min_rank}) must be <= {p}.max_rank ({self.max_rank})")
        if not self.gate_l1 >= 0:
            raise ConfigError(f"{p}.gate_l1 must be >= 0; got {self.gate_l1!r}")
        check_choice(f"{p}.uv_norm", self.uv_norm, ("scale", "l2"))
        check_choice(f"{p}.decay", self.decay, ("none", "fixed", "data"))
        check_positive(f"{p}.band_width", self.band_width, allow_zero=True)
        check_choice(f"{p}.value_proj", self.value_proj, ("linear", "identity"))
        check_choice(f"{p}.out_proj", self.out_proj, ("linear", "identity"))
        check_choice(f"{p}.impl", self.impl, SCAN_IMPLS)
        check_positive(f"{p}.chunk_size", self.chunk_size)


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
        check_positive(f"{p}.hcm_dim", self.hcm_dim)
        check_positive(f"{p}.num_slots", self.num_slots)
        for name in ("decay_min", "decay_max"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{p}.{name} must lie in (0, 1); got {getattr(self, name)!r}")
        if self.decay_min > self.decay_max:
            raise ConfigError(f"{p}.decay_min ({self.decay_min}) must be <= {p}.decay_max ({self.decay_max})")
        if not self.aux_weight >= 0:
            raise ConfigError(f"{p}.aux_weight must be >= 0; got {self.aux_weight!r}")
        check_choice(f"{p}.impl", self.impl, HOLOGRAPHIC_IMPLS)
        check_positive(f"{p}.chunk_size", self.chunk_size)


MIXER_KINDS = ("attention", "semiseparable", "holographic")


@dataclass
class MixerConfig:
    kind: str = "attention"
    linear: LinearConfig = field(default_factory=LinearConfig)  # every projection of the mixer
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    semiseparable: SemiseparableConfig = field(default_factory=SemiseparableConfig)
    holographic: HolographicConfig = field(default_factory=HolographicConfig)

    def __post_init__(self):
        check_choice("mixer.kind", self.kind, MIXER_KINDS)


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
        check_choice("ffn.kind", self.kind, LINEAR_KINDS)
        check_choice("ffn.impl", self.impl, FFN_IMPLS)
        check_positive("ffn.token_chunk", self.token_chunk, allow_zero=True)
        check_choice("ffn.activation", self.activation, ("gelu", "swiglu"))
        if not self.mult > 0:
            raise ConfigError(f"ffn.mult must be > 0; got {self.mult!r}")
        check_positive("ffn.rank", self.rank, allow_zero=True)
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
        check_choice("head.kind", self.kind, ("dense", "tied", "lowrank", "tt"))
        check_choice("head.loss_impl", self.loss_impl, LOSS_IMPLS)
        check_positive("head.rank", self.rank, allow_zero=True)
        if self.kind in ("lowrank", "tt") and self.rank < 1:
            raise ConfigError(f"head.rank must be >= 1 when head.kind is {self.kind!r}; got {self.rank}")
        if self.kind == "tied" and self.bias:
            raise ConfigError("head.bias must be false when head.kind is 'tied'")
        check_positive("head.loss_chunk", self.loss_chunk)


@dataclass
class NormConfig:
    kind: str = "layernorm"  # layernorm | rmsnorm
    eps: float = 1e-5
    shared: bool = False  # one pre-mixer and one pre-FFN norm shared by all blocks

    def __post_init__(self):
        check_choice("norm.kind", self.kind, ("layernorm", "rmsnorm"))
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
    # how factorised weights start: gaussian (each factor drawn independently, scaled so the
    # product's entries have std init_std) | spectral (the best low-rank / TT-SVD approximation of a
    # dense N(0, init_std²) matrix: the top of a dense init's spectrum, orthogonal factors)
    factor_init: str = "gaussian"
    # hybrid models: these layers (0-based) use attention whatever mixer.kind says, the way the
    # H3 / Mamba-2 hybrids put a few attention layers among O(N) ones ([] : none). A negative index
    # counts from the last (-1: the last block), so a preset's layout survives an n_layers override;
    # it is stored resolved ([-1] with 6 layers is [5]).
    attention_layers: list[int] = field(default_factory=list)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    mixer: MixerConfig = field(default_factory=MixerConfig)
    ffn: FFNConfig = field(default_factory=FFNConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    norm: NormConfig = field(default_factory=NormConfig)

    def __post_init__(self):
        check_choice("model.kind", self.kind, MODEL_KINDS)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            check_positive(f"model.{name}", getattr(self, name))
        if self.d_model % self.n_heads:
            raise ConfigError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        check_choice("model.positions", self.positions, ("learned", "rope", "none"))
        if self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise ConfigError("model.positions 'rope' needs an even head dimension (d_model / n_heads)")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1); got {self.dropout!r}")
        if not self.init_std > 0:
            raise ConfigError(f"model.init_std must be > 0; got {self.init_std!r}")
        if self.embedding.kind == "dense" and self.embedding.phase != "none":
            raise ConfigError("embedding.phase applies only to embedding.kind 'tt'")
        check_choice("model.factor_init", self.factor_init, ("gaussian", "spectral"))
        if self.factor_init == "spectral" and self.embedding.kind == "tt" and self.embedding.phase != "none":
            raise ConfigError("model.factor_init spectral needs embedding.phase none (a TT-SVD has no bond phases)")
        if self.attention_layers:
            if self.mixer.kind == "attention":
                raise ConfigError("model.attention_layers applies only when mixer.kind is not attention (every layer "
                                  "already is); set it to [] or choose another mixer.kind")
            n = self.n_layers
            bad = [i for i in self.attention_layers if isinstance(i, bool) or not -n <= i < n]
            resolved = [i % n for i in self.attention_layers]
            if bad or len(set(resolved)) != len(resolved):
                raise ConfigError(f"model.attention_layers must be distinct layer indices in [-{n}, {n}) (negative: "
                                  f"counted from the last; model.n_layers {n}); got {self.attention_layers!r}")
            self.attention_layers = resolved
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

    @property
    def mixer_layout(self) -> str:
        """The mixers in a few words: the kind, and a hybrid's attention layers."""
        return self.mixer.kind + (f" + attention at {self.attention_layers}" if self.attention_layers else "")

    def mixer_kind(self, layer_idx: int) -> str:
        """The mixer of block ``layer_idx``: attention where ``attention_layers`` says so."""
        return "attention" if layer_idx in self.attention_layers else self.mixer.kind
