"""`torchrun --nproc-per-node 2 -m muse train` with DDP over gloo on the CPU."""

import json
import os
import subprocess
import sys



def test_torchrun_ddp_two_processes(wt2_args, tmp_path):
    run = tmp_path / "ddp"
    args = wt2_args(run, **{"train.max_steps": 6, "train.eval_every": 3, "train.batch_size": 4,
                                      "train.device": "cpu"})[1:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "muse", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=280)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("muse train:") == 1  # only rank 0 reports
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    # each step consumes both ranks' micro-batches
    assert steps[-1]["tokens"] == 6 * 2 * 4 * 64
    assert sum("val_loss" in r for r in records) == 2
    meta = json.loads((run / "checkpoints" / "last.json").read_text())
    assert meta["step"] == 6
