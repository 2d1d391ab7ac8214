"""INT8 weight-only quantization of a model's ``nn.Linear`` layers for inference, through torchao.

Only real ``nn.Linear`` modules with a 2-D floating-point weight are quantized (per output
channel, symmetric, int8 storage with one scale per row; activations stay in floating point).
Tensor-train cores, low-rank factors held as plain parameters, embeddings and norms are left
as they are. torchao is imported lazily: it is the optional ``ao`` extra.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

MISSING_TORCHAO = "--int8 needs torchao: pip install torchao (or pip install -e '.[ao]')"


class QuantStats(NamedTuple):
    layers: int  # nn.Linear layers quantized
    bytes_before: int  # their weights, as they were
    bytes_after: int  # their weights, as stored now (int8 data + scales [+ zero points])


def _torchao_config():
    """torchao's int8 weight-only config: ``Int8WeightOnlyConfig`` (>= 0.10) or ``int8_weight_only()``."""
    try:
        import torchao  # noqa: F401
        import torchao.quantization as tq
    except ImportError as e:
        raise ValueError(MISSING_TORCHAO) from e
    if hasattr(tq, "Int8WeightOnlyConfig"):
        try:  # leave the global torch._inductor settings alone
            return tq.quantize_, tq.Int8WeightOnlyConfig(set_inductor_config=False)
        except TypeError:
            return tq.quantize_, tq.Int8WeightOnlyConfig()
    if hasattr(tq, "int8_weight_only") and hasattr(tq, "quantize_"):
        return tq.quantize_, tq.int8_weight_only()
    raise ValueError(f"--int8: this torchao ({getattr(torchao, '__version__', '?')}) has no int8 weight-only config")


def _is_plain(t: Tensor) -> bool:
    return type(t) in (Tensor, nn.Parameter)


def tensor_bytes(t: Tensor) -> int:
    """Storage bytes of a tensor; for a torchao tensor subclass, the sum over its inner tensors."""
    if _is_plain(t):
        return t.numel() * t.element_size()
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        inner = [getattr(t, n) for n in names]
        if inner and all(isinstance(x, Tensor) for x in inner):
            return sum(tensor_bytes(x) for x in inner)
    # fallback: int8 data + one scale per output row in the original dtype
    return t.numel() + t.shape[0] * t.element_size()


def _targets(model: nn.Module) -> list[nn.Linear]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear) and m.weight.dim() == 2 and m.weight.is_floating_point() and _is_plain(m.weight)
    ]


def quantize_int8(model: nn.Module) -> QuantStats:
    """Quantize ``model``'s floating-point ``nn.Linear`` weights to int8 in place (torchao, weight-only).

    Returns (layers quantized, weight bytes before, weight bytes after). Raises ValueError when
    torchao is missing or when the model has no ``nn.Linear`` to quantize.
    """
    targets = _targets(model)
    if not targets:
        raise ValueError(
            "--int8: this model has no nn.Linear layer to quantize (tensor-train, low-rank and embedding "
            "weights are not quantized)"
        )
    quantize_, config = _torchao_config()
    before = sum(tensor_bytes(m.weight) for m in targets)
    ids = {id(m) for m in targets}
    already = {id(m) for m in model.modules() if isinstance(m, nn.Linear) and not _is_plain(m.weight)}
    quantize_(model, config, filter_fn=lambda mod, fqn: id(mod) in ids)
    # torchao may swap modules rather than weights: look at the model again
    done = [
        m for m in model.modules() if isinstance(m, nn.Linear) and not _is_plain(m.weight) and id(m) not in already
    ]
    if len(done) != len(targets):
        raise ValueError(f"--int8: torchao quantized {len(done)} of {len(targets)} nn.Linear layers")
    return QuantStats(len(done), before, sum(tensor_bytes(m.weight) for m in done))
