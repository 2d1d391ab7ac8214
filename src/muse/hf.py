"""Hugging Face ``transformers`` causal LMs behind MUSE's model interface (DESIGN.md §1.6).

Two routes use it:

- ``model.kind: hf-gpt2`` builds transformers' ``GPT2LMHeadModel`` from a ``GPT2Config`` of the
  config's shape, from scratch, and trains it through MUSE's Trainer, data, loss accounting,
  checkpoints and ``muse eval``: the external reference that MUSE's own dense ``baseline`` must
  agree with (same shape, same tokens).
- ``muse eval --hf PATH`` scores a local Hugging Face checkpoint folder zero-shot with the
  tokenizer stored beside it (:func:`load_pretrained`).

Both wrap the transformers model in :class:`HFCausalLM`, which exposes what training and
evaluation read from a ``MuseLM``: ``forward(idx, targets, return_logits) -> LMOutput`` with the
same loss (mean next-token NLL, float32, over every position), ``num_params``,
``dense_equivalent_params``, ``cfg``, ``max_context`` and ``component_modules`` (``muse params``).
It has no incremental decoding (``muse generate`` says so).

``transformers`` is the optional ``hf`` extra and is imported only here, only when one of these
routes runs; without it each route stops with one line naming the extra.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from muse.config import ModelConfig
from muse.model import LMOutput
from muse.ops._dispatch import check_range

MIN_TRANSFORMERS = (4, 42)  # GPT-2 with SDPA attention (FlashAttention on GPU) arrived in 4.42
HF_HINT = "pip install 'muse[hf]'"


def import_transformers(what: str):
    """The ``transformers`` module, or ValueError (one line, naming the extra) for ``what``."""
    try:
        import transformers
    except ImportError:
        raise ValueError(f"{what} needs the transformers package: {HF_HINT}") from None
    found = tuple(int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    if found < MIN_TRANSFORMERS:
        need = ".".join(map(str, MIN_TRANSFORMERS))
        raise ValueError(f"{what} needs transformers >= {need} (found {transformers.__version__}): {HF_HINT}")
    return transformers


def gpt2_config(m: ModelConfig):
    """The ``GPT2Config`` of the same shape as ``m`` (a ``model.kind`` hf-gpt2 config).

    MUSE's FFN is GELU with the tanh approximation, transformers' ``gelu_new``; its ``dropout``
    is GPT-2's embedding, residual and attention dropout. No bos/eos ids: the model never
    generates, and GPT-2's defaults (50256) lie outside a smaller vocabulary.
    """
    transformers = import_transformers("model.kind hf-gpt2")
    return transformers.GPT2Config(
        vocab_size=m.vocab_size, n_positions=m.max_seq_len, n_embd=m.d_model, n_layer=m.n_layers, n_head=m.n_heads,
        n_inner=max(1, round(m.ffn.mult * m.d_model)), activation_function="gelu_new",
        resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.dropout, layer_norm_epsilon=m.norm.eps,
        initializer_range=m.init_std, tie_word_embeddings=m.head.kind == "tied", use_cache=False,
        bos_token_id=None, eos_token_id=None, attn_implementation="sdpa",
    )


class HFCausalLM(nn.Module):
    """A transformers causal LM (``self.hf``) as MUSE's training and evaluation see a model.

    ``cfg`` is the ``ModelConfig`` it was built from (hf-gpt2), or None for a pretrained
    checkpoint loaded with :func:`load_pretrained` (its shape is transformers' config).
    """

    def __init__(self, hf: nn.Module, cfg: ModelConfig | None = None):
        super().__init__()
        self.hf = hf
        self.cfg = cfg
        hc = hf.config
        self.vocab_size: int = hc.vocab_size
        ctx = getattr(hc, "n_positions", None) or getattr(hc, "max_position_embeddings", None)
        self.max_context: int | None = int(ctx) if ctx else None
        self.attn_implementation: str | None = getattr(hc, "_attn_implementation", None)
        if cfg is not None and cfg.checkpointing:
            # transformers checkpoints each block in training mode only, as MuseLM does
            if hasattr(hf, "activation_checkpointing_enable"):  # transformers 5 renamed it
                hf.activation_checkpointing_enable({"use_reentrant": False})
            else:
                hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _check_ids(self, idx: Tensor) -> None:
        """MuseLM's checks: an id outside the table or a sequence past the position table would be
        a device-side assert on CUDA inside transformers, not an error naming the cause."""
        if idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"token ids must be an integer tensor; got {idx.dtype}")
        V = self.vocab_size
        check_range(idx, V, lambda lo, hi: f"token ids must lie in the vocabulary [0, {V})"
                    if lo is None else f"token id {hi if hi >= V else lo} is outside the vocabulary [0, {V})")
        if self.max_context is not None and idx.size(-1) > self.max_context:
            raise ValueError(f"sequence length {idx.size(-1)} exceeds this model's {self.max_context} positions")

    def forward(self, idx: Tensor, targets: Tensor | None = None, return_logits: bool | None = None) -> LMOutput:
        """idx, targets: (B, N) token ids; targets[:, t] is the token after idx[:, t]. The loss is
        MuseLM's: mean NLL over every target (``-100`` ignored), in float32 (float64 for a float64
        model). transformers builds the full (B, N, V) logits whether or not they are returned."""
        self._check_ids(idx)
        logits = self.hf(input_ids=idx, use_cache=False).logits  # (B, N, V)
        loss = None
        if targets is not None:
            z = logits.flatten(0, -2)  # (B·N, V)
            loss = F.cross_entropy(z.to(torch.promote_types(z.dtype, torch.float32)), targets.reshape(-1))
        want_logits = targets is None if return_logits is None else return_logits
        return LMOutput(logits if want_logits else None, loss, None)

    # ------------------------------------------------------------------ accounting
    def num_params(self) -> int:
        """Actual parameters (a tied head counted once); buffers are not parameters."""
        return sum(p.numel() for p in self.parameters())

    def dense_equivalent_params(self) -> int:
        """MUSE's dense GPT-2 count of the config's shape (untied head, FFN ×4), as for MuseLM; a
        pretrained checkpoint has no MUSE shape: its own count."""
        if self.cfg is None:
            return self.num_params()
        from muse.memory.params import dense_equivalent

        return dense_equivalent(self.cfg)["total"]

    def component_modules(self) -> dict[str, list[nn.Module | None]]:
        """The modules of each ``muse.memory.params.COMPONENTS`` entry (GPT-2 layout)."""
        t = getattr(self.hf, "transformer", None)
        if t is None or not hasattr(t, "h"):
            raise ValueError(f"per-component counts need a GPT-2 layout; this is {type(self.hf).__name__}")
        return {
            "embedding": [t.wte, t.wpe],
            "mixers": [b.attn for b in t.h],
            "ffns": [b.mlp for b in t.h],
            "norms": [n for b in t.h for n in (b.ln_1, b.ln_2)] + [t.ln_f],
            "head": [self.hf.lm_head],
        }

    def shard_units(self) -> list[nn.Module]:
        """The modules FSDP shards one by one (``muse.distributed``): GPT-2's blocks."""
        return list(self.hf.transformer.h)

    def mixer_stats(self) -> dict[str, float]:
        return {}  # softmax attention has no statistics to report


def build_hf_gpt2(m: ModelConfig) -> HFCausalLM:
    """``GPT2LMHeadModel`` of ``m``'s shape, freshly initialised (GPT-2's init: N(0, init_std),
    residual projections scaled by 1/√(2L), as MuseLM does), in the current default device and
    dtype (``build_model`` sets both)."""
    transformers = import_transformers("model.kind hf-gpt2")
    return HFCausalLM(transformers.GPT2LMHeadModel(gpt2_config(m)), m)


# ----------------------------------------------------------------------------- pretrained folders


def load_tokenizer(path: Path):
    """The tokenizer saved beside a Hugging Face checkpoint: ``tokenizer.json`` where present, else
    GPT-2's ``vocab.json`` + ``merges.txt`` (the byte-level BPE of MUSE's ``gpt2`` tokenizer).
    Returns (Tokenizer, the file(s) it came from)."""
    from muse.data import DataError, Tokenizer, gpt2_tokenizer

    if (path / "tokenizer.json").is_file():
        return Tokenizer.load(path), "tokenizer.json"
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return gpt2_tokenizer(path), "vocab.json + merges.txt"
    raise DataError(f"--hf {path}: no tokenizer beside the model: expected tokenizer.json or vocab.json + merges.txt")


def load_pretrained(path: str | Path, device: torch.device):
    """(HFCausalLM in eval mode and float32 on ``device``, Tokenizer, facts) from a local Hugging
    Face checkpoint folder; nothing is downloaded."""
    transformers = import_transformers("muse eval --hf")
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise ValueError(f"--hf {path}: not a Hugging Face checkpoint folder ({what})")
    tokenizer, tok_files = load_tokenizer(path)
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--hf {path}: transformers cannot load it ({' '.join(str(e).split())[:300]})") from None
    # a checkpoint saved in half precision is scored like a MUSE run: in float32
    model = HFCausalLM(hf.float()).to(device).eval()
    facts = {
        "model_type": getattr(hf.config, "model_type", None), "architecture": type(hf).__name__,
        "params": model.num_params(), "tokenizer_files": tok_files, "transformers": transformers.__version__,
    }
    return model, tokenizer, facts
