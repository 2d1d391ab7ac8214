"""``muse.ops._triton``: the autotuning space, the disk cache keyed by the GPU, the tuning notice,
and the one-time notice of every op's dispatch on CUDA without Triton.

Triton's interpreter cannot benchmark (no driver) and Triton turns its disk cache off under it,
so the tuning tests give the autotuner a benchmark function and stand in for Triton's file
lookup (``Autotuner.check_disk_cache``: a dict instead of files); everything between (Triton's
``Autotuner.run``, MUSE's key and notice) runs as it does on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from muse.ops import _triton

needs_triton = pytest.mark.skipif(not _triton.HAS_TRITON, reason="triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter (conftest.py)


@needs_triton
def test_configs_space(monkeypatch):
    monkeypatch.setattr(_triton, "interpreting", lambda: True)
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


@needs_triton
def test_disk_cache_feature_check(monkeypatch):
    assert _triton._has_disk_cache()  # the installed Triton (>= 3.7 in the test envs)

    class OldAutotuner:  # Triton < 3.3: no cache_results, no check_disk_cache
        def __init__(self, fn, arg_names, configs, key, reset_to_zero, restore_value, pre_hook=None):
            pass

    monkeypatch.setattr(_triton, "Autotuner", OldAutotuner)
    assert not _triton._has_disk_cache()


def _tuned_kernel(bench_calls: list):
    import triton
    import triton.language as tl

    def bench(kernel_call, quantiles):
        kernel_call()
        bench_calls.append(1)
        return [float(len(bench_calls) % 2), 0.0, 0.0]  # the second config measures faster

    @_triton.autotune(configs=[triton.Config({"BLOCK": 16}, num_warps=1), triton.Config({"BLOCK": 32}, num_warps=1)],
                      key=["n"], do_bench=bench)
    @triton.jit
    def _double(x, y, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y + offs, tl.load(x + offs, mask=offs < n) * 2, mask=offs < n)

    return _double


def _run(kernel, n: int) -> None:
    x = torch.arange(float(n), device=DEVICE)
    y = torch.empty_like(x)
    kernel[lambda meta: (-(-n // meta["BLOCK"]),)](x, y, n)
    assert torch.equal(y, 2 * x)


@pytest.fixture
def disk(monkeypatch):
    """Triton's autotuning file cache as a dict {key: chosen config}, on "GPU A"."""
    from triton.runtime.autotuner import Autotuner

    files: dict = {}

    def check_disk_cache(self, tuning_key, configs, bench_fn):  # Triton's logic, files aside
        if tuning_key in files:
            self.cache[tuning_key] = files[tuning_key]
            return True
        bench_fn()
        files[tuning_key] = min(self.configs_timings, key=self.configs_timings.get)
        return False

    monkeypatch.setattr(Autotuner, "check_disk_cache", check_disk_cache)
    monkeypatch.setattr(_triton, "this_gpu", lambda: "GPU A (7 SMs)")
    monkeypatch.setattr(_triton, "interpreting", lambda: False)  # on CPU the kernels stay interpreted
    monkeypatch.setattr(_triton, "_announced", set())
    return files


@needs_triton
def test_tuning_is_kept_per_gpu_and_shape_and_announced(disk, monkeypatch, capsys):
    bench = []
    k = _tuned_kernel(bench)
    k.cache_results = True  # Triton turns it off under the interpreter
    _run(k, 40)
    err = capsys.readouterr().err
    assert len(bench) == 2 and k.best_config.kwargs == {"BLOCK": 32}
    assert list(disk) == [(40, "torch.float32", "torch.float32", "GPU A (7 SMs)")]
    assert err.count("\n") == 1 and err.startswith("muse: tuning Triton kernel ") and "._double for n=40, float32 (" in err
    assert "once per GPU and shape; cached in " in err

    _run(k, 40)  # the same process: Triton's in-memory cache
    _run(k, 50)  # another shape: tuned and announced
    assert len(bench) == 4 and capsys.readouterr().err.count("for n=50, float32") == 1

    # a new process (a fresh autotuner, nothing announced yet): the choice comes from disk, silently
    monkeypatch.setattr(_triton, "_announced", set())
    k2 = _tuned_kernel(bench)
    k2.cache_results = True
    _run(k2, 40)
    assert len(bench) == 4 and k2.best_config.kwargs == {"BLOCK": 32} and capsys.readouterr().err == ""
    assert (40, "torch.float32", "torch.float32") in k2.cache  # under the key Autotuner.run reads

    # another GPU tunes for itself
    monkeypatch.setattr(_triton, "this_gpu", lambda: "GPU B (9 SMs)")
    k3 = _tuned_kernel(bench)
    k3.cache_results = True
    _run(k3, 40)
    assert len(bench) == 6 and "for n=40" in capsys.readouterr().err
    assert (40, "torch.float32", "torch.float32", "GPU B (9 SMs)") in disk


@needs_triton
def test_no_tuning_notice_under_the_interpreter_or_without_the_cache(disk, monkeypatch, capsys):
    bench = []
    k = _tuned_kernel(bench)
    k.cache_results = False  # as with Triton < 3.3 or MUSE_TRITON_AUTOTUNE_CACHE=0 (and the interpreter)
    _run(k, 40)
    assert len(bench) == 2 and not disk and "(in every process: not kept on disk" in capsys.readouterr().err
    monkeypatch.setattr(_triton, "interpreting", lambda: True)
    _run(_tuned_kernel(bench), 41)
    assert len(bench) == 4 and capsys.readouterr().err == ""


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


@needs_triton
def test_only_the_first_torchrun_process_announces_tuning(disk, monkeypatch, capsys):
    bench = []
    monkeypatch.setenv("RANK", "1")
    _run(_tuned_kernel(bench), 40)
    assert len(bench) == 2 and capsys.readouterr().err == ""  # tuned, silently
    monkeypatch.setenv("RANK", "0")
    _run(_tuned_kernel(bench), 48)
    assert "for n=48" in capsys.readouterr().err
