"""`train.optimizer adamw-offload` (torchao's CPUOffloadOptimizer): config rules, the one-line CPU
error, and on CPU, with CUDA's streams stood in for, torchao's real optimizer inside the trainer:
gradient clipping over the offloaded gradients, checkpoints, and an exact resume."""

import contextlib
import json
import warnings

import pytest
import torch

from muse.cli import main
from muse.config import ConfigError, TrainConfig
from muse.train import build_optimizer
from muse.train import optim as optim_mod
from muse.train import trainer as trainer_mod
from muse.train.optim import clip_grad_norm, is_offloaded, sync_offloaded_params

# ----------------------------------------------------------------------------- config and errors


def test_config_accepts_offload_and_refuses_what_it_cannot_do():
    assert TrainConfig(optimizer="adamw-offload", precision="bf16-pure").optimizer == "adamw-offload"
    with pytest.raises(ConfigError, match=r"train.grad_accum must be 1 with train.optimizer adamw-offload; got 4"):
        TrainConfig(optimizer="adamw-offload", grad_accum=4)
    with pytest.raises(ConfigError, match="fp16 .* does not combine with train.optimizer adamw-offload"):
        TrainConfig(optimizer="adamw-offload", precision="fp16")
    with pytest.raises(ConfigError, match="adamw, adamw8bit, adamw-offload"):
        TrainConfig(optimizer="adamw-cpu")


def test_build_on_cpu_is_a_clear_error():
    with pytest.raises(ConfigError, match="adamw-offload needs a CUDA device"):
        build_optimizer(torch.nn.Linear(64, 64), TrainConfig(optimizer="adamw-offload"), "cpu")


def test_train_on_cpu_is_one_line_before_any_data_work(tmp_path, capsys):
    args = ["train", "tiny", "--run-dir", str(tmp_path / "r"), "--train.device", "cpu",
            "--train.optimizer", "adamw-offload", "--dataset", f"text:{tmp_path / 'missing'}"]
    assert main(args) == 2  # the optimizer's error comes first, though the data does not even exist
    err = capsys.readouterr().err.strip()
    assert "adamw-offload needs a CUDA device" in err and "\n" not in err and "Traceback" not in err
    assert main(args[:-4] + ["--train.optimizer", "adamw-offload", "--train.grad_accum", "2"]) == 2
    assert "train.grad_accum must be 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- torchao's optimizer on CPU


class _Event:
    def synchronize(self):
        pass


class _Stream:
    """Stands in for torch.cuda.Stream: on CPU every copy is already complete."""

    def wait_stream(self, other):
        pass

    def record_event(self):
        return _Event()

    def synchronize(self):
        pass


@pytest.fixture
def offload_on_cpu(monkeypatch):
    """Lets torchao's real CPUOffloadOptimizer run with CPU "device" tensors: its CUDA streams,
    pinned memory and record_stream become no-ops. Everything else is torchao's own code."""
    pytest.importorskip("torchao")
    from torchao.optim import cpu_offload

    real_empty_like = torch.empty_like

    def empty_like(*a, pin_memory=False, **k):
        return real_empty_like(*a, **k)

    monkeypatch.setattr(cpu_offload, "get_available_devices", lambda: ["cpu", "cuda"])
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch, "empty_like", empty_like)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: None)
    for mod in (optim_mod, trainer_mod):
        monkeypatch.setattr(mod, "check_offload_device", lambda device_type: None)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(100, 64)  # 6400 values: offloaded
        self.fc = torch.nn.Linear(64, 96)  # weight offloaded, bias (96) kept on the "GPU"
        self.out = torch.nn.Linear(96, 100)
        self.norm = torch.nn.LayerNorm(64)  # small: kept

    def forward(self, x):
        return self.out(torch.relu(self.fc(self.norm(self.emb(x)))))


def _loss(m, step):
    g = torch.Generator().manual_seed(step)
    x = torch.randint(0, 100, (8, 16), generator=g)
    y = torch.randint(0, 100, (8, 16), generator=g)
    return torch.nn.functional.cross_entropy(m(x).flatten(0, 1), y.flatten()) * 50  # large gradients


def test_offloaded_gradients_leave_the_model_and_clipping_still_sees_them(offload_on_cpu):
    torch.manual_seed(0)
    ref, off = Net(), Net()
    off.load_state_dict(ref.state_dict())
    opt = build_optimizer(off, TrainConfig(optimizer="adamw-offload"), "cuda")
    assert is_offloaded(opt) and len(opt.optim_dict) == 3  # emb, fc.weight, out.weight: >= 4096 values
    _loss(ref, 0).backward()
    _loss(off, 0).backward()
    big = {id(p) for p in opt.param_d2h_map}
    assert all(p.grad is None for p in off.parameters() if id(p) in big)  # gone from the "GPU"
    assert all(p.grad is not None for p in off.parameters() if id(p) not in big)
    # torch's own clipping would see only the small gradients: a different norm
    partial = torch.nn.utils.clip_grad_norm_([p for p in off.parameters() if p.grad is not None], float("inf"))
    want = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
    got = clip_grad_norm(off, opt, 0.5)
    assert want > 1 and partial < 0.9 * want
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    for (name, p_ref), p_off in zip(ref.named_parameters(), off.parameters()):
        g = opt.param_d2h_map[p_off].grad if id(p_off) in big else p_off.grad
        torch.testing.assert_close(g, p_ref.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_offload_steps_like_fused_adamw_with_clipping(offload_on_cpu):
    torch.manual_seed(0)
    ref, off = Net(), Net()
    off.load_state_dict(ref.state_dict())
    cfg = TrainConfig(optimizer="adamw-offload", lr=1e-2, weight_decay=0.1)
    opt = build_optimizer(off, cfg, "cuda")
    ref_opt = torch.optim.AdamW(optim_mod.param_groups(ref, cfg.weight_decay), lr=cfg.lr,
                                betas=(cfg.beta1, cfg.beta2), fused=True)
    for step in range(5):
        for m, o in ((ref, ref_opt), (off, opt)):
            _loss(m, step).backward()
            clip_grad_norm(m, o, 0.5)
            o.step()
            o.zero_grad(set_to_none=True)
    for (name, a), b in zip(ref.named_parameters(), off.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def test_sync_offloaded_params_refreshes_the_host_copies(offload_on_cpu):
    m = Net()
    opt = build_optimizer(m, TrainConfig(optimizer="adamw-offload"), "cuda")
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)  # e.g. weights loaded from a checkpoint after the optimizer was built
    assert not all(torch.equal(h, d) for d, h in opt.param_d2h_map.items())
    sync_offloaded_params(opt)
    assert all(torch.equal(h, d) for d, h in opt.param_d2h_map.items())


def test_loaded_state_keeps_the_lr_schedule_on_the_small_parameters(offload_on_cpu, tmp_path):
    cfg = TrainConfig(optimizer="adamw-offload", lr=1.0, warmup_steps=10, max_steps=100)
    m = Net()
    opt = build_optimizer(m, cfg, "cuda")
    sched = optim_mod.build_scheduler(opt, cfg, 100)
    _loss(m, 0).backward()
    opt.step()
    sched.step()
    state = opt.state_dict()
    assert set(state) == {"offloaded", "on-device"} and len(state["offloaded"]) == 3

    m2 = Net()
    opt2 = build_optimizer(m2, cfg, "cuda")
    sched2 = optim_mod.build_scheduler(opt2, cfg, 100)
    optim_mod.load_optimizer_state(opt2, state)
    sched2.load_state_dict(sched.state_dict())
    for _ in range(3):
        sched2.step()
    lrs = [g["lr"] for g in opt2.d_opt.param_groups] + [g["lr"] for o in opt2.optim_dict.values() for g in o.param_groups]
    assert lrs == pytest.approx([0.5] * 4)  # step 4 of a 10-step warm-up, on the GPU-side group too
    # torchao's own load_state_dict alone leaves the on-device groups behind the schedule
    opt3 = build_optimizer(Net(), cfg, "cuda")
    sched3 = optim_mod.build_scheduler(opt3, cfg, 100)
    opt3.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": intended here
        sched3.step()
    assert opt3.d_opt.param_groups[0]["lr"] == pytest.approx(0.2)  # frozen at the saved value


def _metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_trainer_checkpoints_and_resumes_exactly(offload_on_cpu, wt2_args, tmp_path, interrupted_run):
    over = {"train.max_steps": 8, "train.eval_every": 4, "train.device": "cpu", "train.optimizer": "adamw-offload",
            "train.grad_clip": 0.5, "model.n_layers": 1}
    assert main(wt2_args(tmp_path / "full", **over)) == 0
    full = [m for m in _metrics(tmp_path / "full") if "loss" in m]
    ck = torch.load(next((tmp_path / "full/checkpoints").glob("step-00000008/trainer.pt")), weights_only=True)
    assert set(ck["optimizer"]) >= {"offloaded", "on-device"} and ck["optimizer"]["offloaded"]

    assert interrupted_run(wt2_args(tmp_path / "cut", **over), after_saves=1) == 130
    assert main(["train", "--resume", str(tmp_path / "cut"), "--train.progress", "false"]) == 0
    cut = [m for m in _metrics(tmp_path / "cut") if "loss" in m]
    assert [m["step"] for m in cut] == list(range(1, 9))
    assert [m["loss"] for m in cut] == [m["loss"] for m in full]  # host copies, states and schedule restored
