"""Parameter accounting: actual vs dense-equivalent, per component (DESIGN.md §2).

*Actual parameters* are ``sum(p.numel())`` of the built model (shared tensors once), counted on
the ``meta`` device so a 100 B-shaped preset costs no memory. *Dense-equivalent* is the count of
the same-shape GPT-2-style model: learned positions, LayerNorm, GELU MLP ×4 with biases, dense
attention with biases, untied dense head without bias. A ``model.kind: hf-gpt2`` config
(transformers' ``GPT2LMHeadModel``) of such a shape has exactly that many parameters; transformers
< 5 also gives each layer a causal-mask buffer, and buffers are not parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from muse.config import Config, ModelConfig

COMPONENTS = ("embedding", "mixers", "ffns", "norms", "head")


def dense_equivalent(cfg: Config | ModelConfig) -> dict[str, int]:
    """Per-component parameter counts of the same-shape dense GPT-2-style model."""
    m = cfg.model if isinstance(cfg, Config) else cfg
    V, d, L, N = m.vocab_size, m.d_model, m.n_layers, m.max_seq_len
    out = {
        "embedding": V * d + N * d,  # token table + learned positions
        "mixers": L * (4 * d * d + 4 * d),  # qkv (d×3d + 3d) and output (d×d + d)
        "ffns": L * (8 * d * d + 5 * d),  # d×4d + 4d and 4d×d + d
        "norms": (2 * L + 1) * 2 * d,  # two LayerNorms per block and the final one
        "head": V * d,
    }
    out["total"] = sum(out.values())
    return out


@dataclass
class ComponentCount:
    name: str
    actual: int
    dense_equivalent: int

    @property
    def compression(self) -> float:
        return 1.0 - self.actual / self.dense_equivalent if self.dense_equivalent else 0.0


def count_components(model) -> dict[str, int]:
    """Actual parameters of a built model per component (its ``component_modules()``: MuseLM or
    the hf-gpt2 adapter); each tensor counted once, buffers never."""
    seen: set[int] = set()

    def count(modules) -> int:
        n = 0
        for mod in modules:
            if mod is None:
                continue
            for p in mod.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    n += p.numel()
        return n

    modules = model.component_modules()
    out = {c: count(modules[c]) for c in COMPONENTS}
    rest = sum(p.numel() for p in model.parameters() if id(p) not in seen)
    assert rest == 0, f"{rest} parameters belong to no component"
    out["total"] = sum(out.values())
    return out


def param_report(cfg: Config | ModelConfig) -> dict:
    """The ``muse params`` figures: actual vs dense-equivalent per component, built on ``meta``."""
    from muse.model import build_model

    model = build_model(cfg, device="meta")
    actual, dense = count_components(model), dense_equivalent(cfg)
    rows = [ComponentCount(c, actual[c], dense[c]) for c in COMPONENTS]
    total = ComponentCount("total", actual["total"], dense["total"])
    name = cfg.name if isinstance(cfg, Config) else "custom"
    return {
        "name": name,
        "actual_params": total.actual,
        "dense_equivalent_params": total.dense_equivalent,
        "compression": total.compression,
        "components": [
            {"name": r.name, "actual": r.actual, "dense_equivalent": r.dense_equivalent, "compression": r.compression}
            for r in rows
        ],
    }
