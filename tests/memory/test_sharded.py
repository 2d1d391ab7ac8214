"""`muse memory --nproc K`: rank 0 of an FSDP2 step over a fake process group of K, on the CPU.

Expected per-process bytes are computed here from the unsharded model's shapes: FSDP2 splits a
parameter on dim 0 (on its largest dim where dim 0 has fewer entries than processes) into K
chunks as ``torch.chunk`` does, and rank 0 holds the first, the largest.
"""

import contextlib
import json
import math

import pytest
import torch

import muse
from muse.cli import main
from muse.config import ConfigError
from muse.memory import sharded
from muse.memory.accounting import (
    expected_optimizer_bytes,
    optimizer_state_bytes,
    tensor_bytes,
)
from muse.memory.profile import StepPlan, plan_config, plan_step
from muse.memory.profile import run as run_one


def _tiny(**over):
    base = {"model.vocab_size": 512, "model.d_model": 64, "model.n_layers": 2, "model.n_heads": 4,
            "model.max_seq_len": 64}
    return muse.load_config("tiny", {**base, **over})


def _rank0_numel(shape: tuple[int, ...], k: int) -> int:
    """Values of rank 0's shard of a parameter of ``shape`` over ``k`` processes."""
    dim = 0 if shape[0] >= k else max(range(len(shape)), key=lambda d: shape[d])
    return math.ceil(shape[dim] / k) * math.prod(shape) // shape[dim]


def _state(n: int, es: int, optimizer: str) -> int:
    """AdamW's two moments + its 4-byte step; torchao's 8-bit codes + fp32 block scales for
    tensors (here: shards) of >= 4096 values divisible by 256."""
    if optimizer == "adamw8bit" and n >= 4096 and n % 256 == 0:
        return 2 * (n + 4 * (n // 256)) + 4
    return 2 * n * es + 4


def _expected(cfg, precision: str, optimizer: str, k: int) -> dict:
    model = muse.build_model(cfg, dtype=torch.bfloat16 if precision == "bf16-pure" else None)
    params = list(model.parameters())
    es = params[0].element_size()  # FSDP keeps the sharded parameters in their own dtype under bf16 autocast
    local = [_rank0_numel(tuple(p.shape), k) for p in params]
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # not sharded
    return {"parameters": sum(local) * es + buffers, "gradients": sum(local) * es,
            "optimizer_state": sum(_state(n, es, optimizer) for n in local)}


KEYS = ("parameters", "gradients", "optimizer_state")


# 3 processes: uneven chunks (dense embedding and head: FSDP2 shards a TT core, (1, 32, 8, 16),
# only on a dim that the process count divides)
@pytest.mark.parametrize("k, precision, optimizer, over", [
    (2, "fp32", "adamw", {}), (4, "fp32", "adamw", {}), (2, "bf16", "adamw8bit", {}), (2, "bf16-pure", "adamw", {}),
    (3, "fp32", "adamw", {"model.embedding.kind": "dense", "model.head.kind": "dense"}),
])
def test_estimate_shards_parameters_gradients_and_optimizer_state(k, precision, optimizer, over):
    cfg = _tiny(**over)
    plan = StepPlan(batch=2, seq=64, precision=precision, optimizer=optimizer)
    one = run_one(cfg, plan, device="cpu")
    r = sharded.run(cfg, plan, nproc=k, device="cpu")
    assert r["nproc"] == k and r["parallel"] == "fsdp" and r["method"] == "estimate"
    assert r["device"].endswith(f"fake process group of {k}")
    assert {key: r[key] for key in KEYS} == _expected(cfg, precision, optimizer, k)
    # beside them, the one-process figures: what `muse memory` without --nproc reports
    assert r["one_process"] == {key: one[key] for key in KEYS}
    # about 1/k of one process's (rank 0's chunks are the rounded-up ones); torchao keeps plain
    # states for shards under 4096 values, so its state divides less
    divided = KEYS if optimizer == "adamw" else KEYS[:2]
    assert sum(r[key] for key in divided) <= 1.02 * sum(one[key] for key in divided) / k
    assert r["activations"] > 0 and r["peak"] == sum(r[key] for key in (*KEYS, "workspace", "activations"))
    assert not torch.distributed.is_initialized()  # the fake process group is gone


def test_the_measured_path_on_real_tensors():
    """What `measure` runs on CUDA, on the CPU: the fake process group, the sharded model and the
    optimizer on its shards, two of the trainer's steps; real bytes of real shards and states."""
    cfg = plan_config(_tiny(**{"train.parallel": "fsdp"}), plan := StepPlan(batch=2, seq=32))
    with sharded.fake_world(2):
        model, opt, forward_model = sharded.build_sharded(cfg, plan, torch.device("cpu"), 2)
        assert forward_model is model and all(type(p).__name__ == "DTensor" for p in model.parameters())
        step = plan_step(cfg, plan, model, opt, torch.randint(0, 512, (2, 33)), forward_model)
        step()
        grads = step()
        want = _expected(_tiny(), "fp32", "adamw", 2)
        assert tensor_bytes([*model.parameters(), *model.buffers()]) == want["parameters"]
        assert grads == want["gradients"]
        assert optimizer_state_bytes(opt) == want["optimizer_state"] == expected_optimizer_bytes(model, "adamw", "cpu")
    assert not torch.distributed.is_initialized()


# parameters and gradients outweigh the activations of one short sequence: a gradient-sized
# temporary at clipping time would raise the step's peak
GRADS_DOMINATE = {"model.vocab_size": 4096, "model.d_model": 256, "model.n_layers": 8, "model.mixer.kind": "attention",
                  "model.positions": "learned"}


def test_fake_tensors_count_what_real_ones_allocate_and_clipping_allocates_only_norms():
    """Why the estimate under FSDP leaves clipping out: forward + backward of the sharded step on
    fake tensors reach the peak that real tensors reach, but clipping DTensor gradients is counted
    as two copies of them on fake tensors, while on real ones it allocates a norm per gradient."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from muse.train.step import TrainStep

    cfg = plan_config(_tiny(**GRADS_DOMINATE, **{"train.parallel": "fsdp"}), plan := StepPlan(1, 8, mode="fwdbwd"))
    cpu, seen = torch.device("cpu"), {}

    def total(tracker, which):
        return sum(d["Total"] for d in tracker.get_tracker_snapshot(which).values())

    for fake in (True, False):
        with sharded.fake_world(2), FakeTensorMode() if fake else contextlib.nullcontext():
            model = sharded.build_sharded(cfg, plan, cpu, 2)[0]
            idx = torch.randint(0, 4096, (1, 9))
            tracker = MemTracker()
            tracker.track_external(model)
            with tracker:
                TrainStep(model, None, cpu)(idx[None, :, :-1], idx[None, :, 1:])
                grads = tensor_bytes(p.grad for p in model.parameters())
                before, current = total(tracker, "peak"), total(tracker, "current")
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                seen[fake] = (before, total(tracker, "peak") - before)
    assert seen[True][0] == seen[False][0]
    assert current + 2 * grads > before  # two gradient-sized copies would show in the peak...
    assert seen[False][1] < 4096  # ...real clipping makes none


def test_sharded_estimate_leaves_clipping_out():
    cfg = _tiny(**GRADS_DOMINATE)
    plan = StepPlan(batch=1, seq=8)
    r = sharded.run(cfg, plan, nproc=2, device="cpu")
    cfg.train.grad_clip = 0.0
    unclipped = sharded.run(cfg, plan, nproc=2, device="cpu")
    assert "grad_clip_note" in r and "grad_clip_note" not in unclipped
    assert r["activations"] == unclipped["activations"] and r["peak"] == unclipped["peak"]


def test_nproc_1_is_the_one_process_run():
    plan = StepPlan(batch=1, seq=64)
    assert sharded.run(_tiny(), plan, nproc=1, device="cpu") == run_one(_tiny(), plan, device="cpu")


def test_measured_results_are_labelled_and_carry_no_throughput(monkeypatch):
    seen = {}

    def fake_run(cfg, plan, budget=None, device="auto", build=None):
        seen.update(parallel=cfg.train.parallel, world=torch.distributed.get_world_size(), build=build)
        return {"method": "measured", "device": "GPU", "tokens_per_s": 1e6, **dict.fromkeys(KEYS, 1)}

    monkeypatch.setattr(sharded, "run_one", fake_run)
    r = sharded.run(_tiny(), StepPlan(batch=1, seq=64), nproc=4, device="cuda")
    assert seen["parallel"] == "fsdp" and seen["world"] == 4 and seen["build"].keywords == {"nproc": 4}
    assert r["method"] == "measured, fake process group of 4" and r["tokens_per_s"] is None
    assert "communicates nothing" in r["tokens_per_s_note"]


def test_process_group_is_released_after_an_error(monkeypatch):
    def broken(*a, **k):
        raise ValueError("boom")

    monkeypatch.setattr(sharded, "run_one", broken)
    with pytest.raises(ValueError, match="boom"):
        sharded.run(_tiny(), StepPlan(batch=1, seq=64), nproc=2, device="cpu")
    assert not torch.distributed.is_initialized()


def test_nproc_values_are_checked():
    plan = StepPlan(batch=1, seq=8)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="--nproc must be a positive integer"):
            sharded.check_nproc(bad, plan, _tiny())


BASE = ["memory", "tiny", "--model.vocab_size", "512", "--model.d_model", "64", "--model.n_layers", "2",
        "--model.max_seq_len", "64", "--device", "cpu"]


@pytest.mark.parametrize("args, msg", [
    (["--nproc", "0"], "--nproc must be a positive integer; got 0"),
    (["--nproc", "-1"], "--nproc must be a positive integer; got -1"),
    (["--nproc", "2", "--mode", "infer"], "--mode infer is one process's inference"),
    (["--nproc", "2", "--optimizer", "adamw-offload"], "shards the step with FSDP2: train.optimizer adamw-offload"),
    (["--nproc", "2", "--precision", "fp16"], "--nproc 2 shards the step with FSDP2: train.precision fp16"),
])
def test_memory_nproc_errors_are_one_line(args, msg, capsys):
    assert main([*BASE, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("muse: error: ") and msg in err and "\n" not in err


def test_memory_nproc_cli(capsys):
    assert main([*BASE, "--batch", "2", "--nproc", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["nproc"] == 2 and r["one_process"]["parameters"] > r["parameters"]
    assert main([*BASE, "--batch", "2", "--nproc", "2"]) == 0
    out = capsys.readouterr().out
    assert "FSDP2 over 2 processes" in out and "estimate per process" in out and "one process" in out


def test_memory_on_a_missing_cuda_device_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["memory", "tiny", "--device", "cuda", "--batch", "1", "--seq", "16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("muse: error:") and "CUDA is not available" in err and err.count("\n") == 1
