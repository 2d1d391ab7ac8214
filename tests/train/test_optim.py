"""Optimizer construction, weight-decay groups and the warm-up + cosine LR schedule."""

import builtins
import math
import shutil

import pytest
import torch
from torch import nn

from muse.config import TrainConfig
from muse.train import build_optimizer, build_scheduler, lr_lambda, param_groups
from muse.train.checkpoint import load_checkpoint, save_checkpoint


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.blocks = nn.ModuleList([self.proj, self.proj])  # the same Linear twice
        self.head_norm_weight = nn.Parameter(torch.ones(2, 4))  # a 2-D per-head norm gain
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)


def cfg(**kw):
    return TrainConfig(**{"lr": 1.0, "warmup_steps": 10, "min_lr_ratio": 0.1, "max_steps": 110, **kw})


# ----------------------------------------------------------------------------- parameter groups


def test_param_groups_split_by_dimension_each_parameter_once():
    m = Small()
    decay, no_decay = param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert ids(decay) == {id(m.emb.weight), id(m.proj.weight)}
    assert ids(no_decay) == {id(m.proj.bias), id(m.norm.weight), id(m.norm.bias), id(m.head_norm_weight)}
    all_params = decay["params"] + no_decay["params"]
    assert len(all_params) == len({id(p) for p in all_params}) == 6  # shared once, frozen left out


def test_param_groups_drop_empty_groups():
    groups = param_groups(nn.LayerNorm(4), 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0


def test_factor_lr_scale_puts_factors_in_their_own_group():
    """train.factor_lr_scale: low-rank A/B and TT cores train at lr·scale, everything else
    (their biases and phases included) at lr, and the schedule keeps the ratio."""
    from muse.layers.linear import LowRankLinear
    from muse.layers.tt import TTMatrix

    m = nn.ModuleDict({"low": LowRankLinear(6, 5, 2), "tt": TTMatrix(12, 4, 2, phase="cos"), "dense": nn.Linear(3, 3)})
    opt = build_optimizer(m, cfg(lr=1e-3, factor_lr_scale=4.0, warmup_steps=2, max_steps=20), "cpu")
    by_name = {g["name"]: g for g in opt.param_groups}
    assert set(by_name) == {"decay", "no_decay", "decay_factor"}
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert ids(by_name["decay_factor"]) == {id(m["low"].A), id(m["low"].B), *map(id, m["tt"].cores)}
    assert ids(by_name["decay"]) == {id(m["dense"].weight)}
    assert id(m["low"].bias) in ids(by_name["no_decay"]) and id(m["tt"].phases[0]) in ids(by_name["no_decay"])
    assert by_name["decay_factor"]["lr"] == pytest.approx(4e-3) and by_name["decay"]["lr"] == pytest.approx(1e-3)
    sched = build_scheduler(opt, cfg(lr=1e-3, factor_lr_scale=4.0, warmup_steps=2, max_steps=20), 20)
    for _ in range(7):
        opt.step()
        sched.step()
    assert by_name["decay_factor"]["lr"] == pytest.approx(4 * by_name["decay"]["lr"])
    # scale 1: the two groups of every earlier run (checkpoints keep loading)
    assert [g["name"] for g in build_optimizer(m, cfg(lr=1e-3), "cpu").param_groups] == ["decay", "no_decay"]


def test_build_adamw_uses_groups_and_betas():
    m = Small()
    opt = build_optimizer(m, cfg(beta1=0.8, beta2=0.9, weight_decay=0.05), "cpu")
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)
    assert not opt.defaults["fused"]  # fused kernels are for CUDA


# ----------------------------------------------------------------------------- schedule


def test_lr_schedule_values():
    c = cfg()  # warm-up 10, cosine to 0.1 at step 110
    assert lr_lambda(0, c, 110) == pytest.approx(0.1)  # step 0 already learns
    assert lr_lambda(4, c, 110) == pytest.approx(0.5)
    assert lr_lambda(9, c, 110) == pytest.approx(1.0)  # end of warm-up
    assert lr_lambda(10, c, 110) == pytest.approx(1.0)  # start of decay
    assert lr_lambda(60, c, 110) == pytest.approx(0.55)  # cosine midpoint: (1 + 0.1) / 2
    assert lr_lambda(110, c, 110) == pytest.approx(0.1)
    assert lr_lambda(500, c, 110) == pytest.approx(0.1)
    values = [lr_lambda(s, c, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_lr_schedule_without_total_steps_and_without_warmup():
    assert lr_lambda(5, cfg(), None) == pytest.approx(0.6)
    assert lr_lambda(10_000, cfg(), None) == 1.0
    c = cfg(warmup_steps=0)
    assert lr_lambda(0, c, 100) == 1.0 and lr_lambda(100, c, 100) == pytest.approx(0.1)


def test_scheduler_drives_optimizer_and_round_trips_its_state(tmp_path):
    c = cfg(lr=0.5)
    m = Small()
    opt = build_optimizer(m, c, "cpu")
    sched = build_scheduler(opt, c, 110)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    for _ in range(30):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.5 * lr_lambda(30, c, 110))

    state = {"step": 30, "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    save_checkpoint(tmp_path, m, state)  # through torch.load(weights_only=True) on the way back
    _, state = load_checkpoint(tmp_path)
    opt2 = build_optimizer(Small(), c, "cpu")
    sched2 = build_scheduler(opt2, c, 110)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert sched2.last_epoch == 30 and sched2.get_last_lr() == sched.get_last_lr()
    sched.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_scheduler_rejects_empty_schedule():
    with pytest.raises(ValueError, match="total_steps"):
        build_scheduler(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0), cfg(), 0)


# ----------------------------------------------------------------------------- 8-bit AdamW


def test_adamw8bit_without_torchao_is_a_one_line_error(monkeypatch):
    real_import = builtins.__import__

    def no_torchao(name, *args, **kwargs):
        if name.startswith("torchao"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    with pytest.raises(ValueError, match=r"^train\.optimizer adamw8bit needs torchao: pip install 'muse\[ao\]'$"):
        build_optimizer(Small(), cfg(optimizer="adamw8bit"), "cpu")


def test_adamw8bit_on_cpu_without_compiler_is_a_clear_error(monkeypatch):
    pytest.importorskip("torchao")
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        build_optimizer(Small(), cfg(optimizer="adamw8bit"), "cpu")


def regression_problem():
    """A linear map with a 64×64 weight: 4096 elements, so its moments really are 8-bit."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g)
    y = x @ torch.randn(64, 64, generator=g) / 8
    torch.manual_seed(0)
    return nn.Linear(64, 64), x, y


def test_adamw8bit_trains_and_resumes_exactly_on_cpu(tmp_path):
    """Needs torchao and a C++ compiler (torch.compile on CPU); the first step compiles."""
    pytest.importorskip("torchao")
    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler for torch.compile")
    from torchao.optim.subclass_8bit import OptimState8bit

    c = cfg(optimizer="adamw8bit", lr=1e-2, warmup_steps=5, weight_decay=0.0)

    def run(model, opt, sched, steps):
        losses = []
        for _ in range(steps):
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        return losses

    model, x, y = regression_problem()
    opt = build_optimizer(model, c, "cpu")
    sched = build_scheduler(opt, c, 60)
    losses = run(model, opt, sched, 40)
    assert isinstance(opt.state[model.weight]["exp_avg"], OptimState8bit)
    assert losses[-1] < 0.2 * losses[0]
    save_checkpoint(tmp_path, model, {"step": 40, "optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
    tail = run(model, opt, sched, 10)

    model2 = nn.Linear(64, 64)
    opt2 = build_optimizer(model2, c, "cpu")
    sched2 = build_scheduler(opt2, c, 60)
    _, state = load_checkpoint(tmp_path, model2)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert run(model2, opt2, sched2, 10) == tail
    assert torch.equal(model.weight, model2.weight)
    assert math.isclose(float(opt2.param_groups[0]["lr"]), float(opt.param_groups[0]["lr"]))
