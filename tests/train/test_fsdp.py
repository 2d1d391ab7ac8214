"""FSDP2 over gloo on the CPU: `torchrun --nproc-per-node 2 -m muse train ... --train.parallel fsdp`.

Two processes of 4 sequences train on exactly the windows of one process of 8 (BatchSampler), so
FSDP must reproduce single-process training loss for loss, within fp32 tolerance: the only
differences are the order of the gradient sums (reduce-scatter) and of the evaluation sums (split
across the ranks). The learning rate is constant (no warm-up, min_lr_ratio 1), so a run stopped at
step 4 and resumed to step 8 follows the same schedule as one trained to step 8 at once.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from muse.cli import main
from muse.config import ConfigError
from muse.distributed import resolve_parallel

STEPS, HALF = 8, 4
# 67 windows of 64 tokens: 17 evaluation batches of 4, an odd number for 2 processes (one of them
# runs a weight-0 batch so both run as many FSDP forwards)
EVAL_TOKENS = 67 * 64 - 1
RTOL = 2e-5


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _args(cache: Path, run: Path, steps: int, batch: int, **over) -> list[str]:
    """A small model on the offline default dataset, bytes tokenizer (no tokenizer training)."""
    opts = {"data.tokenizer": "bytes", "data.cache_dir": cache, "model.vocab_size": 512, "model.d_model": 64,
            "model.n_layers": 2, "model.max_seq_len": 64, "train.max_steps": steps, "train.eval_every": HALF,
            "train.batch_size": batch, "train.device": "cpu", "train.warmup_steps": 0, "train.min_lr_ratio": 1.0,
            "train.eval_tokens": EVAL_TOKENS, "train.log_every": 1, "train.lr": 3e-3, "train.progress": "false",
            "train.tensorboard": "false", **over}
    return ["train", "tiny", "--run-dir", str(run), *[a for k, v in opts.items() for a in (f"--{k}", str(v))]]


def _torchrun(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m", "muse", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=timeout)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def _val(run: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "val_loss" in r}


def _close(a: dict[int, float], b: dict[int, float], steps) -> None:
    for s in steps:
        assert a[s] == pytest.approx(b[s], rel=RTOL), (s, a[s], b[s])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache):
    """single (1 × 8 sequences, 8 steps), single_half (the same, 4 steps), fsdp (2 × 4, 8 steps)
    and fsdp_half (2 × 4, 4 steps)."""
    root = tmp_path_factory.mktemp("fsdp")
    out = {name: root / name for name in ("single", "single_half", "fsdp", "fsdp_half")}
    assert main(_args(cache, out["single"], STEPS, 8)) == 0  # also fills the token cache
    assert main(_args(cache, out["single_half"], HALF, 8)) == 0
    _torchrun(_args(cache, out["fsdp"], STEPS, 4, **{"train.parallel": "fsdp"}))
    res = _torchrun(_args(cache, out["fsdp_half"], HALF, 4, **{"train.parallel": "fsdp"}))
    # the run goes on as it was launched
    assert f"continue:  torchrun --nproc-per-node 2 -m muse train --resume {out['fsdp_half']}" in res.stdout
    return out


def test_fsdp_matches_single_process_loss_for_loss(runs):
    single, fsdp = _losses(runs["single"]), _losses(runs["fsdp"])
    assert sorted(fsdp) == list(range(1, STEPS + 1))
    _close(fsdp, single, range(1, STEPS + 1))
    assert fsdp[STEPS] < fsdp[1]
    # evaluation split across the two ranks equals one process scoring every window
    _close(_val(runs["fsdp"]), _val(runs["single"]), (HALF, STEPS))
    ckpt = runs["fsdp"] / "checkpoints" / f"step-{STEPS:08d}"
    assert (ckpt / "dcp" / ".metadata").is_file() and not (ckpt / "model.safetensors").exists()
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["parallel"] == "fsdp"


def test_sharded_checkpoint_resumes_with_two_and_with_one_process(runs, tmp_path):
    reference = _losses(runs["fsdp"])
    two, one = tmp_path / "two", tmp_path / "one"
    shutil.copytree(runs["fsdp_half"], two)
    shutil.copytree(runs["fsdp_half"], one)
    _torchrun(["train", "--resume", str(two), "--train.max_steps", str(STEPS)])
    _close(_losses(two), reference, range(HALF + 1, STEPS + 1))
    # one process, no process group at all: DCP reads both shards; 8 sequences per step keep
    # the global batch, which --resume accepts in place of 2 processes of 4
    assert main(["train", "--resume", str(one), "--train.max_steps", str(STEPS), "--train.parallel", "none",
                 "--train.batch_size", "8"]) == 0
    _close(_losses(one), reference, range(HALF + 1, STEPS + 1))
    last = one / "checkpoints" / f"step-{STEPS:08d}"
    assert (last / "model.safetensors").is_file() and not (last / "dcp").exists()


def test_single_file_checkpoint_resumes_under_fsdp(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["single_half"], run)
    _torchrun(["train", "--resume", str(run), "--train.max_steps", str(STEPS), "--train.parallel", "fsdp",
               "--train.batch_size", "4"])
    _close(_losses(run), _losses(runs["single"]), range(HALF + 1, STEPS + 1))


def test_resume_refuses_another_global_batch(runs, tmp_path, capsys):
    """2 × 4 sequences may be resumed as 1 × 8, not as 1 × 6."""
    run = tmp_path / "run"
    shutil.copytree(runs["fsdp_half"], run)
    assert main(["train", "--resume", str(run), "--train.max_steps", str(STEPS), "--train.parallel", "none",
                 "--train.batch_size", "6"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("muse: error:") and "train.batch_size: 4 -> 6" in err and "Traceback" not in err


def test_export_and_eval_of_a_sharded_checkpoint(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["fsdp"], run)
    score = ["eval", str(run), "--split", "valid", "--max-tokens", "2048", "--json", "--device", "cpu"]
    assert main(score) == 0
    before = json.loads(capsys.readouterr().out)
    assert main(["export", str(run)]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    ckpt = run / "checkpoints" / f"step-{STEPS:08d}"
    assert (ckpt / "model.safetensors").is_file()
    assert main(score) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["loss"] == pytest.approx(before["loss"], rel=1e-12)
    out = tmp_path / "weights.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 0 and out.is_file()


@pytest.mark.parametrize("over, needle", [
    ({"train.optimizer": "adamw-offload"}, "adamw-offload does not combine with train.parallel fsdp"),
    ({"train.precision": "fp16"}, "fp16 (loss scaling) does not combine with train.parallel fsdp"),
    ({"train.cuda_graph": "true", "train.device": "cuda"}, "train.cuda_graph does not combine with train.parallel fsdp"),
    ({"train.parallel": "fsdp2"}, "train.parallel must be one of"),
])
def test_bad_combinations_are_one_line_errors(cache, tmp_path, capsys, over, needle):
    args = _args(cache, tmp_path / "run", STEPS, 4, **{"train.parallel": "fsdp", **over})
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("muse: error:") and needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_parallel_none_with_several_processes_is_refused():
    assert resolve_parallel("auto", 1) == "none" and resolve_parallel("auto", 4) == "ddp"
    assert resolve_parallel("fsdp", 1) == "fsdp"
    with pytest.raises(ConfigError, match="would train 2 unrelated models"):
        resolve_parallel("none", 2)


@pytest.mark.slow  # torchao compiles its 8-bit step in each process: about a minute on 2 cores
def test_adamw8bit_bf16_checkpointing_under_fsdp_save_and_resume_unsharded(cache, tmp_path):
    """torchao's 8-bit AdamW on sharded parameters, bf16 mixed precision (bf16 gathers, fp32
    reduction) and activation checkpointing together; its sharded checkpoint stores the states
    dequantized, so one process without FSDP resumes it, with 8-bit states again."""
    pytest.importorskip("torchao")
    run = tmp_path / "run"
    over = {"train.parallel": "fsdp", "train.optimizer": "adamw8bit", "train.precision": "bf16",
            "model.checkpointing": "true", "model.d_model": 128}  # 128: some states large enough for 8 bits
    _torchrun(_args(cache, run, HALF, 4, **over))
    losses = _losses(run)
    assert sorted(losses) == list(range(1, HALF + 1)) and losses[HALF] < losses[1]
    import yaml

    from muse.config import Config, DataConfig, from_dict
    from muse.train.checkpoint import resolve_checkpoint
    from muse.train.trainer import Trainer

    cfg = from_dict(Config, DataConfig.saved(yaml.safe_load((run / "config.yaml").read_text())))
    cfg.train.parallel, cfg.train.batch_size, cfg.train.max_steps = "none", 8, STEPS
    trainer = Trainer(cfg, run, resume=True)
    assert trainer.step == HALF and trainer.parallel == "none"
    states = [s["exp_avg"] for s in trainer.optimizer.state.values()]
    assert any(hasattr(s, "dequantize") for s in states)  # quantized again after loading plain values
    assert trainer.fit()["step"] == STEPS
    assert resolve_checkpoint(run).name == f"step-{STEPS:08d}"


@pytest.mark.slow  # Inductor compiles each block in both processes
def test_fsdp_with_torch_compile_matches_eager_fsdp(runs, cache, tmp_path):
    """Each block compiled in place before sharding: the same losses as the eager FSDP run."""
    run = tmp_path / "run"
    _torchrun(_args(cache, run, HALF, 4, **{"train.parallel": "fsdp", "train.compile": "true"}))
    _close(_losses(run), _losses(runs["fsdp"]), range(1, HALF + 1))


def test_shard_dim_avoids_empty_and_uneven_shards():
    from muse.distributed.parallelize import shard_dim

    assert shard_dim((50, 16), 4) == 0  # dim 0 as FSDP2 does (it pads an uneven dim 0)
    assert shard_dim((1, 32, 8, 16), 2) == 1  # a TT core: no empty shard on dim 0
    assert shard_dim((1, 64, 16, 16), 3) == 0  # no dim that 3 divides: dim 0 (FSDP2 pads only dim 0)
    assert shard_dim((1, 6, 16, 9), 3) == 3  # the largest dim that 3 divides
    assert shard_dim((), 2) == 0


def test_hf_gpt2_under_fsdp_matches_one_process(cache, tmp_path):
    """transformers' GPT-2 (model.kind hf-gpt2) is sharded per block the same way."""
    pytest.importorskip("transformers")
    over = {"model.n_heads": 2, "model.dropout": 0.0}
    one, two = tmp_path / "one", tmp_path / "two"
    args = lambda run, batch, **kw: ["train", "hf-gpt2", *_args(cache, run, HALF, batch, **over, **kw)[2:]]  # noqa: E731
    assert main(args(one, 8)) == 0
    _torchrun(args(two, 4, **{"train.parallel": "fsdp"}))
    _close(_losses(two), _losses(one), range(1, HALF + 1))
    assert (two / "checkpoints" / f"step-{HALF:08d}" / "dcp" / ".metadata").is_file()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("parallel, precision", [("none", "bf16"), ("none", "bf16-pure"), ("fsdp", "bf16")])
def test_tiny_trains_on_cuda_in_bf16(cache, tmp_path, parallel, precision):
    """`muse train tiny --train.parallel fsdp --train.precision bf16 --train.optimizer adamw8bit` on
    one H100 (a world of one) ended with an illegal memory access in the semiseparable scan's
    backward (`scan_backward`, while autotuning) at commit 5788e78. The cause was the scan's
    `_bwd_main_kernel` (fp32-operand products at the 16-bit dot precision), not FSDP: the `none`
    rows hit the same kernel at tiny's shapes."""
    run = tmp_path / f"{parallel}-{precision}"
    args = ["train", "tiny", "--run-dir", str(run), "--data.tokenizer", "bytes", "--data.cache_dir", str(cache),
            "--model.vocab_size", "512", "--train.max_steps", "3", "--train.eval_every", "3", "--train.eval_tokens",
            "8192", "--train.log_every", "1", "--train.progress", "false", "--train.tensorboard", "false",
            "--train.parallel", parallel, "--train.precision", precision, "--train.device", "cuda"]
    res = subprocess.run([sys.executable, "-m", "muse", *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(_losses(run)) == 3


def test_resumed_ddp_run_keeps_each_rank_s_dropout_stream(cache, tmp_path):
    """With dropout, two processes draw different masks (seed + 1 + rank). A checkpoint keeps every
    rank's RNG state, so a run stopped at step 4 and resumed to 8 takes the same steps as one
    trained to 8 at once; restoring rank 0's state on both ranks (as before) changed steps 5-8."""
    over = {"model.dropout": 0.1, "train.parallel": "ddp"}
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _torchrun(_args(cache, whole, STEPS, 4, **over))
    _torchrun(_args(cache, resumed, HALF, 4, **over))
    _torchrun(["train", "--resume", str(resumed), "--train.max_steps", str(STEPS)])
    _close(_losses(resumed), _losses(whole), range(HALF + 1, STEPS + 1))
