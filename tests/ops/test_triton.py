"""``muse.ops._triton``: the autotuning space, and the one-time notice of every op's dispatch on
CUDA without Triton."""

from __future__ import annotations

import pytest
import torch

from muse.ops import _triton

needs_triton = pytest.mark.skipif(not _triton.HAS_TRITON, reason="triton is not installed")


@needs_triton
def test_configs_space(monkeypatch):
    cfg = _triton.configs([{"B": 1}, {"B": 2}], warps=(4, 8), stages=(2, 3), interp={"B": 16})
    assert [(c.kwargs, c.num_warps, c.num_stages) for c in cfg] == [({"B": 16}, 1, 1)]  # the interpreter
    monkeypatch.setattr(_triton, "interpreting", lambda: False)
    monkeypatch.setattr(_triton, "AUTOTUNE", True)  # the test session sets MUSE_TRITON_AUTOTUNE=0
    cfg = _triton.configs([{"B": 1}, {"B": 2}], warps=(4, 8), stages=(2, 3))
    assert [(c.kwargs["B"], c.num_warps, c.num_stages) for c in cfg] == [
        (b, w, s) for b in (1, 2) for w in (4, 8) for s in (2, 3)]
    monkeypatch.setattr(_triton, "AUTOTUNE", False)
    cfg = _triton.configs([{"B": 1}, {"B": 2}], warps=(8, 4), stages=(2, 3))
    assert [(c.kwargs, c.num_warps, c.num_stages) for c in cfg] == [({"B": 1}, 8, 2)]


def _every_op_on_cpu() -> dict:
    """Each op's "auto" path on small CPU tensors (fp32)."""
    from muse.ops.gates import gate_inputs
    from muse.ops.linear_ce import linear_cross_entropy
    from muse.ops.lowrank_mlp import lowrank_mlp
    from muse.ops.rmsnorm import rms_norm
    from muse.ops.semiseparable import semiseparable
    from muse.ops.tt_gather import tt_gather

    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u, z = r(1, 20, 2, 4), r(1, 20, 2, 8)
    cores = [r(1, 3, 4, 2), r(2, 5, 6, 1)]
    return {
        "semiseparable": lambda: semiseparable(u, u, z, -torch.rand(1, 20, 2, generator=g), chunk_size=16),
        "linear_cross_entropy": lambda: linear_cross_entropy(r(6, 8), r(11, 8), torch.arange(6)),
        "tt_gather": lambda: tt_gather(torch.tensor([0, 7, 14]), cores, [3, 5], [4, 6], 20),
        "lowrank_mlp": lambda: lowrank_mlp(r(5, 4), r(4, 16), None, r(16, 4)),
        "gate_inputs": lambda: gate_inputs(u, r(1, 20, 2, 2), r(1, 20, 2), 0.5),
        "rms_norm": lambda: rms_norm(r(3, 8), r(8)),
    }


def test_every_op_falls_back_silently_off_cuda_and_says_so_once_on_cuda(no_triton, monkeypatch, capsys):
    """Without Triton: off CUDA every op takes its torch path without a word; on CUDA (tensors
    taken for CUDA ones) each op's dispatch says once per process that Triton is missing, and
    runs its torch path."""
    import muse.ops.gates as gates
    import muse.ops.linear_ce as lce
    import muse.ops.lowrank_mlp as lm
    import muse.ops.rmsnorm as rn
    import muse.ops.semiseparable as ss
    import muse.ops.tt_gather as tg
    from muse.ops import record_paths

    ops = _every_op_on_cpu()
    with record_paths() as paths:
        for call in ops.values():
            call()
    assert capsys.readouterr().err == ""
    assert set(paths) == set(ops) and all("triton" not in impls for impls in paths.values())

    for m in (gates, lce, lm, rn, ss, tg):
        monkeypatch.setattr(m, "assumes_cuda", lambda t: True)
    for name, call in ops.items():  # each op's own dispatch says it
        monkeypatch.setattr(_triton, "_noticed", False)
        with record_paths() as paths:
            call()
            call()
        assert "triton" not in paths[name], name
        assert capsys.readouterr().err.count("muse: Triton is not installed") == 1, name
    for call in ops.values():  # once per process
        call()
    assert capsys.readouterr().err == ""
