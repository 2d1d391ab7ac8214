"""``autocast_once``: a mixer's projections share one autocast copy of their input, and nothing
else changes (outputs and gradients bit for bit)."""

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

import muse.mixers.holographic as holographic
import muse.mixers.semiseparable as semiseparable
from muse.config import load_config
from muse.mixers import build_mixer
from muse.ops import autocast_once

BASE = {"model.d_model": 24, "model.n_heads": 3, "model.n_layers": 2, "model.max_seq_len": 64,
        "model.mixer.linear.rank": 4}
CASES = [
    *((semiseparable, {"model.mixer.linear.kind": lin, "model.mixer.semiseparable.value_proj": vp,
                       "model.mixer.semiseparable.decay": "data", "model.mixer.semiseparable.impl": "chunked",
                       "model.mixer.semiseparable.chunk_size": 8})
      for lin in ("dense", "lowrank", "tt") for vp in ("linear", "identity")),
    *((holographic, {"model.mixer.kind": "holographic", "model.mixer.linear.kind": lin,
                     "model.mixer.holographic.hcm_dim": 15, "model.mixer.holographic.num_slots": 5,
                     "model.mixer.holographic.chunk_size": 8})
      for lin in ("dense", "lowrank", "tt")),
]


@pytest.mark.parametrize("module, over", CASES, ids=lambda c: c.__name__.rsplit(".", 1)[-1] if hasattr(c, "__name__")
                         else "-".join(str(v) for k, v in c.items() if k.endswith(("linear.kind", "value_proj"))))
def test_one_autocast_copy_of_the_input_changes_nothing(monkeypatch, module, over):
    """Under autocast the projections read one cast of x instead of casting it each: the output
    and every gradient are the same bit for bit as with autocast's own casts."""
    torch.manual_seed(0)
    mixer = build_mixer(load_config("tiny", {**BASE, **over}).model, 0)
    x0 = torch.randn(2, 19, 24)

    def step(cast):
        monkeypatch.setattr(module, "autocast_once", cast)
        mixer.zero_grad()
        x = x0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            # a non-leaf input, as in a model (autocast caches its casts of leaves that need grad)
            y, aux = mixer(x * 1.0)
        (y.float().square().sum() + (0 if aux is None else aux.float())).backward()
        return [y, x.grad] + [p.grad for p in mixer.parameters()]

    once, each = step(autocast_once), step(lambda x: lambda: x)
    assert once[0].dtype == torch.bfloat16
    for a, b in zip(once, each, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def test_autocast_once_saves_one_copy():
    """k matmuls of one fp32 input under autocast save one low-precision copy of it, not k."""
    x = torch.randn(8, 16, requires_grad=True)
    ws = [torch.randn(16, 4, requires_grad=True) for _ in range(4)]
    for cast, copies in ((autocast_once, 1), (lambda x: lambda: x, 4)):
        storages = set()

        def pack(t):
            if t.dtype == torch.bfloat16 and t.shape == x.shape:
                storages.add(t.untyped_storage().data_ptr())
            return t

        with torch.autocast("cpu", dtype=torch.bfloat16), saved_tensors_hooks(pack, lambda t: t):
            xs = cast(x * 1.0)  # a non-leaf, as in a model: autocast caches its casts of leaves
            sum(xs() @ w for w in ws).float().sum().backward()
        assert len(storages) == copies
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = x.detach().bfloat16()
        assert autocast_once(h)() is h  # already in the autocast dtype
    assert autocast_once(x)() is x  # no autocast: x itself
