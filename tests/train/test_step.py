"""The one training step (muse.train.step) that the trainer, `muse memory` / `muse verify` and the
benchmarks share: it equals a hand-written update (micro-batches, auxiliary loss, loss scaling,
clipping, AdamW) in float64, and every user of a training step runs it."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from muse.config import load_config
from muse.memory.profile import StepPlan, build_plan, estimate, plan_config, plan_step
from muse.train import step as step_mod
from muse.train.step import TrainStep, build_training, training_loss

CPU = torch.device("cpu")
# a `compact` model small enough for float64 on a CPU: TT embedding, semiseparable mixer (whose
# gates add an auxiliary loss), low-rank FFN and head, activation checkpointing
SMALL = {"model.d_model": 32, "model.n_layers": 2, "model.n_heads": 2, "model.vocab_size": 97,
         "model.max_seq_len": 16, "train.seq_len": 16, "train.precision": "fp32", "train.lr": 1e-2,
         "train.weight_decay": 0.1, "train.beta1": 0.8, "train.beta2": 0.95, "train.optimizer": "adamw"}
CLIP = 0.05  # well below the gradient norm (asserted), so clipping changes the update


def _small(**over):
    cfg = load_config("compact", {**SMALL, **over})
    torch.manual_seed(0)
    model, opt = build_training(cfg, CPU)
    model.double()  # in place: the optimizer keeps the same parameters
    return cfg, model, opt


def _batches(steps: int, accum: int, B: int = 3, N: int = 11):
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 97, (accum, B, N), generator=g), torch.randint(0, 97, (accum, B, N), generator=g))
            for _ in range(steps)]


def _reference(model, cfg, batches, clip: float):
    """Hand-written steps: gradients of mean over micro-batches of (loss + aux loss), scaled by
    min(1, clip / (norm + 1e-6)) over all of them, then AdamW (decoupled weight decay on tensors
    of >= 2 dims except norm gains, bias-corrected moments). Returns the mean losses and the norms."""
    tc = cfg.train
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p.ndim >= 2 and "norm" not in n.rsplit(".", 1)[-1] for n, p in zip(names, params)]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    losses, norms = [], []
    for t, (x, y) in enumerate(batches, start=1):
        accum = x.shape[0]
        grads = [torch.zeros_like(p) for p in params]
        total = 0.0
        for i in range(accum):
            out = model(x[i], y[i])
            assert out.aux_loss is not None and out.aux_loss.item() > 0  # the objective has both terms
            gs = torch.autograd.grad((out.loss + out.aux_loss) / accum, params, allow_unused=True)
            grads = [a + (b if b is not None else 0) for a, b in zip(grads, gs)]
            total += out.loss.item()
        losses.append(total / accum)
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        norms.append(norm)
        coef = min(1.0, clip / (norm + 1e-6)) if clip else 1.0
        with torch.no_grad():
            for k, (p, g) in enumerate(zip(params, grads)):
                g = g * coef
                if decay[k]:
                    p.mul_(1 - tc.lr * tc.weight_decay)
                m[k] = tc.beta1 * m[k] + (1 - tc.beta1) * g
                v[k] = tc.beta2 * v[k] + (1 - tc.beta2) * g * g
                denom = (v[k] / (1 - tc.beta2**t)).sqrt() + 1e-8
                p.sub_(tc.lr / (1 - tc.beta1**t) * m[k] / denom)
    return losses, norms


@pytest.mark.parametrize("scale", [None, 2.0**10])  # fp16's loss scaling: unscaled before clipping
def test_train_step_equals_a_hand_written_update(scale):
    cfg, model, opt = _small()
    ref = _small()[1]
    ref.load_state_dict(model.state_dict())
    batches = _batches(steps=2, accum=2)
    scaler = None if scale is None else torch.amp.GradScaler("cpu", init_scale=scale)
    step = TrainStep(model, opt, CPU, precision="fp32", grad_clip=CLIP, scaler=scaler)
    got = []
    for x, y in batches:
        loss = step(x, y)
        assert loss.shape == () and loss.dtype == torch.float32 and loss.device == CPU
        assert all(p.grad is not None for p in model.parameters())  # left for the caller to drop
        step.zero_grad()
        assert all(p.grad is None for p in model.parameters())
        got.append(loss.item())
    want, norms = _reference(ref, cfg, batches, CLIP)
    assert min(norms) > 4 * CLIP  # clipping did scale every step
    assert got == pytest.approx(want, rel=1e-6)  # the reported loss: fp32, next-token loss only
    for (name, a), b in zip(ref.named_parameters(), model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=name)


def test_train_step_without_optimizer_leaves_clipped_gradients():
    cfg, model, _ = _small()
    before = [p.detach().clone() for p in model.parameters()]
    (x, y), = _batches(steps=1, accum=2)
    TrainStep(model, None, CPU, grad_clip=CLIP)(x, y)
    grads = [p.grad.clone() for p in model.parameters()]
    assert math.sqrt(sum(float(g.pow(2).sum()) for g in grads)) == pytest.approx(CLIP, rel=1e-6)
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p.detach(), q)  # no update
    model.zero_grad(set_to_none=True)
    TrainStep(model, None, CPU)(x, y)  # no clipping: the plain gradient of the objective
    params = list(model.parameters())
    want = [torch.zeros_like(p) for p in params]
    for i in range(2):
        objective, _ = training_loss(model, x[i], y[i])
        want = [w + (g if g is not None else 0)
                for w, g in zip(want, torch.autograd.grad(objective / 2, params, allow_unused=True))]
    for p, w in zip(params, want):
        torch.testing.assert_close(p.grad, w, rtol=1e-10, atol=1e-14)


class _DDPLike(torch.nn.Module):
    """Records which micro-batches run inside ``no_sync`` (what DDP's forward reads)."""

    def __init__(self, module):
        super().__init__()
        self.module, self.syncing, self.seen = module, True, []

    @contextlib.contextmanager
    def no_sync(self):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True

    def forward(self, x, y):
        self.seen.append(self.syncing)
        return self.module(x, y)


def test_gradients_are_all_reduced_at_the_last_micro_batch_only():
    cfg, model, opt = _small()
    wrapped = _DDPLike(model)
    (x, y), = _batches(steps=1, accum=3)
    TrainStep(model, opt, CPU, forward_model=wrapped)(x, y)
    assert wrapped.seen == [False, False, True]


def test_build_training_dtypes_and_optimizer():
    cfg = load_config("tiny", {"train.precision": "bf16-pure"})
    torch.manual_seed(0)
    model, opt = build_training(cfg, CPU)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and model.training
    assert isinstance(opt, torch.optim.AdamW) and torch.get_default_dtype() == torch.float32
    torch.manual_seed(0)
    again, none = build_training(cfg, CPU, optimizer=False, init_on_device=True)
    assert none is None
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)  # on the CPU both ways draw the same weights
    cfg = load_config("tiny", {"train.precision": "bf16"})
    assert {p.dtype for p in build_training(cfg, CPU)[0].parameters()} == {torch.float32}  # autocast


# ----------------------------------------------------------------------------- one step for all


@pytest.fixture
def calls(monkeypatch):
    """Every TrainStep built and every call of one: [(step, x.shape)]."""
    seen = []
    real = TrainStep.__call__

    def spy(self, x, y):
        seen.append((self, tuple(x.shape)))
        return real(self, x, y)

    monkeypatch.setattr(TrainStep, "__call__", spy)
    return seen


def test_memory_estimate_runs_the_trainers_step_up_to_the_update(calls, monkeypatch):
    clipped = []
    real_clip = step_mod.clip_grad_norm
    monkeypatch.setattr(step_mod, "clip_grad_norm", lambda *a: clipped.append(a[2]) or real_clip(*a))
    cfg = load_config("tiny", {"train.grad_clip": 0.7, "train.precision": "bf16"})
    estimate(cfg, StepPlan(2, 32, precision="bf16", mode="train"))
    (step, shape), = calls
    assert shape == (1, 2, 32) and step.optimizer is None and step.grad_clip == 0.7 and clipped == [0.7]
    assert isinstance(step.autocast, torch.autocast)  # the plan's precision
    calls.clear()
    estimate(cfg, StepPlan(2, 32, mode="fwdbwd"))
    (step, shape), = calls
    assert step.grad_clip == 0 and clipped == [0.7]  # forward + backward only
    calls.clear()
    estimate(cfg, StepPlan(2, 32, mode="infer"))
    assert calls == []  # a forward under no_grad, no training step


def test_measured_step_is_the_trainers_step(calls):
    """What `measure` (CUDA) and the throughput benchmark run: build_plan + plan_step."""
    cfg = plan_config(load_config("tiny", {"train.grad_clip": 0.3}), StepPlan(2, 24, mode="train"))
    model, opt = build_plan(cfg, StepPlan(2, 24, mode="train"), CPU)
    before = [p.detach().clone() for p in model.parameters()]
    idx = torch.randint(0, cfg.model.vocab_size, (2, 25))
    grads = plan_step(cfg, StepPlan(2, 24, mode="train"), model, opt, idx)()
    (step, shape), = calls
    assert shape == (1, 2, 24) and step.optimizer is opt and step.grad_clip == 0.3
    assert grads == sum(p.numel() * 4 for p in model.parameters())  # fp32 gradients, measured before they are dropped
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(p.detach(), q) for p, q in zip(model.parameters(), before))  # updated


def test_trainer_runs_the_step(calls, wt2_args, tmp_path):
    from muse.cli import main

    over = {"train.max_steps": 2, "train.eval_every": 2, "train.grad_accum": 2, "train.grad_clip": 0.25,
            "train.device": "cpu"}
    assert main(wt2_args(tmp_path / "r", **over)) == 0
    assert [shape for _, shape in calls] == [(2, 8, 64)] * 2
    step = calls[0][0]
    assert all(s is step for s, _ in calls) and step.grad_clip == 0.25 and isinstance(step.optimizer, torch.optim.AdamW)
    assert not step.scaler.is_enabled()
