"""``muse compare --jobs K``: K worker processes train a comparison's runs side by side on one
device.

Small models leave most of a large GPU idle (a d=128 model's step is a few milliseconds of
launches), so a learning-rate sweep of a dozen of them spends most of its time on the host. K
workers, each a process of its own (its own CUDA context, allocator and peak counter), take the
runs one at a time from the comparison's list: a worker claims a run by creating
``OUT/claims/<run>`` exclusively, trains and scores it with the same :func:`train_and_score` as a
lone run, and writes its row. What sharing changes, and what it does not:

- quality and peak memory do not depend on it: batches depend only on the seed, and each
  process's ``max_memory_allocated`` counts its own tensors only;
- speed does: a shared run's tokens/s measure the device's share it got, so its row keeps them as
  ``tokens_per_s_shared_median`` and records ``device_shared_by``; its ``tokens_per_s_median`` is
  None. :func:`muse.compare.report.with_solo_speed` reports, where the same model ran alone at
  another learning rate, that run's tokens/s (the step does not depend on the learning rate),
  named so.

A run a worker did not finish (the worker crashed or was stopped) has no row, nor has a run that
ran out of device memory beside the others (:func:`shared_oom`: alone it may fit, so that is
not its result): the parent's own pass over the comparison trains it alone afterwards, or a
later invocation does.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

from muse.compare.run import Options, load_row, row_path, slug, train_and_score, write_json
from muse.compare.spec import Run


def claim(claims_dir: Path, run: Run) -> bool:
    """Whether this process got ``run`` (exactly one process does: O_EXCL)."""
    try:
        fd = os.open(claims_dir / f"{slug(run.label)}-{run.key[:8]}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def worker(runs: list[Run], opts: Options, index: int) -> None:
    """One worker: claim, train and score runs until none is left. A user-facing error ends it
    with one line and exit code 2, as ``muse`` itself does (the parent goes on)."""
    from muse.config import ConfigError
    from muse.data import DataError
    from muse.train.checkpoint import CheckpointError

    try:
        _work(runs, opts, index)
    except (ConfigError, DataError, CheckpointError, ValueError, OSError) as e:
        print(f"muse: error: [worker {index}] {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _work(runs: list[Run], opts: Options, index: int) -> None:
    import dataclasses

    import torch

    opts = dataclasses.replace(opts, shared_by=opts.jobs)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // opts.jobs))  # the host is shared too
    claims = opts.out / "claims"
    for run in runs:
        if load_row(opts.out, run) is not None or not claim(claims, run):
            continue
        print(f"muse compare: [worker {index}] {run.label}: training (lr {run.lr:g})", flush=True)
        row = train_and_score(run, opts)
        if shared_oom(row):
            print(f"muse compare: [worker {index}] {run.label}: out of memory beside the other runs; "
                  "left to train alone", flush=True)
            continue
        write_json(row_path(opts.out, run), row)
        t = (row.get("test") or {}).get("perplexity")
        print(f"muse compare: [worker {index}] {run.label}: {row['status']}"
              + (f", test ppl {t:.2f}" if isinstance(t, float) else ""), flush=True)


def shared_oom(row: dict) -> bool:
    """Whether a shared run's row records running out of device memory, in training or in the
    peak measurement: a fact about the sharing, not the run."""
    text = " ".join(str(row.get(k) or "") for k in ("status_detail", "peak_memory_error")).lower()
    return "out of memory" in text or "outofmemory" in text


def run_workers(runs: list[Run], opts: Options) -> None:
    """Train ``runs`` (those without a row) with ``opts.jobs`` worker processes. Stopping the parent (SIGTERM, Ctrl-C) stops the workers: a stopped run resumes
    from its last checkpoint next time."""
    import multiprocessing

    claims = opts.out / "claims"
    shutil.rmtree(claims, ignore_errors=True)  # claims of an earlier, finished or stopped, invocation
    claims.mkdir(parents=True)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA state inherited
    procs = [ctx.Process(target=worker, args=(runs, opts, i), name=f"muse-compare-{i}") for i in range(opts.jobs)]
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(claims, ignore_errors=True)
    for i, p in enumerate(procs):
        if p.exitcode:
            print(f"muse compare: worker {i} exited with code {p.exitcode}; runs it left unfinished train alone "
                  "next", file=sys.stderr, flush=True)


def _stop(signum, frame):
    raise SystemExit(128 + signum)
