"""The training loop behind ``muse train``.

Single process or torchrun with DDP or FSDP2 (``train.parallel``; applied from outside the model
by :func:`muse.distributed.parallelize`). Batches are a pure function of (seed, step) and the
checkpoint carries model, optimizer, scheduler, grad-scaler and RNG state, so ``--resume``
continues bit-for-bit like an uninterrupted run (on CPU, same seed). Rank 0 writes everything
but the shards of a sharded (FSDP) checkpoint, which every process writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from muse.config import Config, ConfigError, DataConfig, flatten, from_dict, to_dict
from muse.data import BatchSampler, Tokenizer, prepare_data
from muse.distributed import all_gather_object, all_reduce_sum, init_distributed, parallelize, resolve_parallel
from muse.distributed.checkpoint import load_full_into_sharded, load_sharded, save_sharded
from muse.evaluate import total_nll
from muse.runtime import apply_cublas_workspace, autocast_context
from muse.train.checkpoint import (
    is_sharded, load_checkpoint, read_file, read_meta, resolve_checkpoint, rng_state, save_checkpoint, set_rng_state,
)
from muse.train.graph import resolve_cuda_graph
from muse.train.optim import (
    build_optimizer, build_scheduler, check_offload_device, is_offloaded, load_optimizer_state, sync_offloaded_params,
)
from muse.train.progress import Progress
from muse.train.step import TrainStep, build_training, capture

# train.* keys that may change on --resume without changing what the run computes
RESUMABLE_TRAIN_KEYS = {
    "max_steps", "max_tokens", "max_minutes", "eval_every", "eval_tokens", "log_every", "progress",
    "tensorboard", "wandb", "out_dir", "device", "compile", "compile_mode",
    "cuda_graph", "cublas_workspace", "parallel",
}


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says what is kept."""


def config_differences(saved: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ in a way that would change a resumed run's results."""
    a, b = flatten(to_dict(saved)), flatten(to_dict(new))
    skip = {"name", "description"} | {f"train.{k}" for k in RESUMABLE_TRAIN_KEYS}
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if k not in skip and a.get(k) != b.get(k)]


def load_run_config(run_dir: str | Path) -> Config:
    """The config a run was trained with. ``run_dir`` must be the run directory itself: resuming
    from a ``checkpoints/`` or ``step-…`` directory would write the continued run inside it."""
    ckpt = resolve_checkpoint(run_dir)
    run = ckpt.parent.parent
    if run.resolve() != Path(run_dir).expanduser().resolve():
        raise ConfigError(f"--resume takes a run directory; {run_dir} is inside the run {run}: use --resume {run}")
    return from_dict(Config, DataConfig.saved(yaml.safe_load(read_file(ckpt, "config.yaml"))))


def _peak_memory_mib(device: torch.device) -> float:
    """CUDA: the peak of allocated tensor memory; elsewhere the process's peak resident set (the
    interpreter, torch and the data included), which the log calls "peak RSS"."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # macOS reports bytes, Linux KiB


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False):
        self.cfg, tc = cfg, cfg.train
        self.run_dir = Path(run_dir)
        apply_cublas_workspace(tc.cublas_workspace)  # before anything touches CUDA
        self.dist, self.device = init_distributed(tc.device, tc.parallel)
        self.parallel = resolve_parallel(tc.parallel, self.dist.world_size)
        if self.device.type == "cuda" and self.device.index is not None:
            # streams, CUDA graphs and torch.tensor(..., device="cuda") follow the current device
            torch.cuda.set_device(self.device)
        if tc.cuda_graph is True:  # fail before the data is prepared
            resolve_cuda_graph(cfg, self.device, self.dist.world_size)
        if tc.optimizer == "adamw-offload":  # fail before the data is prepared
            check_offload_device(self.device.type)
            if self.parallel != "none":
                raise ConfigError(
                    "train.optimizer adamw-offload is single-GPU only (torchao's CPUOffloadOptimizer frees each "
                    "gradient before DDP could all-reduce it); use adamw or adamw8bit under torchrun"
                )
        self.ckpt_dir = resolve_checkpoint(self.run_dir) if resume else None
        tokenizer = None
        if resume:
            saved = load_run_config(self.run_dir)
            diff = config_differences(saved, cfg)
            if self._same_global_batch(saved):
                # e.g. 2 processes of 4 sequences resumed by 1 of 8: the same batches (BatchSampler)
                diff = [d for d in diff if not d.startswith("train.batch_size:")]
            if diff:
                raise ConfigError(f"--resume {self.run_dir}: the config disagrees with the saved run ({'; '.join(diff)})")
            tokenizer = Tokenizer.load(self.ckpt_dir)
        elif self.dist.is_main and (self.run_dir / "checkpoints").exists():
            raise ConfigError(f"run directory {self.run_dir} already holds checkpoints; use --resume {self.run_dir}")

        # rank 0 tokenizes and fills the cache; the others then read it
        with self._rank0_first():
            self.data = prepare_data(cfg.data, cfg.model.vocab_size, tokenizer=tokenizer)
        self.tokenizer = self.data.tokenizer

        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        # pure bf16: parameters, gradients and optimizer states in bf16, built so from the start
        # (see README: update rounding). CPU init keeps runs identical across devices.
        # under FSDP the model stays on the host until fully_shard moves it to the device one
        # block at a time, as shards: one that fits only sharded never exists whole there
        build_on = torch.device("cpu") if self.parallel == "fsdp" else self.device
        self.model, _ = build_training(cfg, build_on, optimizer=False)
        # FSDP replaces the parameters with sharded ones: the optimizer is built on those
        self.train_model = parallelize(self.model, self.parallel, self.device, self.dist.world_size,
                                       precision=tc.precision, compile=tc.compile, compile_mode=tc.compile_mode)
        self.optimizer = build_optimizer(self.model, tc, self.device.type)
        self.cuda_graph, why = resolve_cuda_graph(cfg, self.device, self.dist.world_size, self.optimizer)
        if tc.cuda_graph == "auto":
            self._note(f"train.cuda_graph auto -> {'on' if self.cuda_graph else 'off'} ({why})")
        self.tokens_per_step = tc.batch_size * cfg.seq_len * tc.grad_accum * self.dist.world_size
        self.total_steps = self._schedule_steps()
        self.scheduler = build_scheduler(self.optimizer, tc, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=tc.precision == "fp16")
        self.autocast = autocast_context(tc.precision, self.device)
        self.step, self.tokens, self.best_val, self.train_seconds = 0, 0, math.inf, 0.0
        if resume:
            st = self._load_state()
            self.scheduler.load_state_dict(st["scheduler"])
            self.scaler.load_state_dict(st["scaler"])
            self.step, self.tokens = st["step"], st["tokens"]
            self._restore_rng(st, tc.seed)
            self.best_val, self.train_seconds = st["best_val_loss"], st["train_seconds"]
        else:
            torch.manual_seed(tc.seed + 1 + self.dist.rank)  # dropout streams differ per rank

        self.update = TrainStep(self.model, self.optimizer, self.device, precision=tc.precision,
                                grad_clip=tc.grad_clip, forward_model=self.train_model, scaler=self.scaler)
        self._captured = None
        if self.cuda_graph:  # after loading state: that restores host LRs and step counters
            self._captured = capture(
                self.update, strict=tc.cuda_graph is True,
                notify=lambda why: self._note(f"train.cuda_graph auto -> off after the warm-up steps ({why})"),
            )
        self.sampler = BatchSampler(
            self.data.tokens["train"], tc.batch_size, cfg.seq_len, tc.seed, self.dist.rank, self.dist.world_size
        )
        if self.dist.is_main and not resume:
            # made only now: a run that fails on its data or its config leaves no empty directory
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OSError(f"cannot create run directory {self.run_dir}: {e.strerror or e}") from None
        self._files = self._checkpoint_files()
        self._metrics = self._open_metrics(resume)
        self._tb = self._wandb = None

    # ------------------------------------------------------------------ setup helpers
    def _same_global_batch(self, saved: Config) -> bool:
        """This run's global batch (sequences per micro-batch over all processes) equals that of
        the run it resumes, which may have had another number of processes (saved in the
        checkpoint's metadata), with the same micro-batches per step."""
        world = int(read_meta(self.ckpt_dir).get("world_size", 1))
        tc, st = self.cfg.train, saved.train
        return tc.grad_accum == st.grad_accum and tc.batch_size * self.dist.world_size == st.batch_size * world

    def _load_state(self) -> dict:
        """Load the checkpoint we resume from into the model and optimizer; returns the rest of
        its trainer state. A sharded checkpoint loads into any parallelism and process count
        (DCP reshards); a single-file one into FSDP too, each process keeping its shards."""
        ckpt, offload = self.ckpt_dir, is_offloaded(self.optimizer)
        if is_sharded(ckpt):
            if offload:
                raise ConfigError(f"{ckpt} is a sharded (FSDP) checkpoint; resume it with train.optimizer adamw "
                                  "or adamw8bit, not adamw-offload")
            load_sharded(ckpt, self.model, self.optimizer)
            return load_checkpoint(ckpt, map_location=self.device)[1]
        if self.parallel == "fsdp":
            st = load_checkpoint(ckpt, map_location="cpu")[1]
            load_full_into_sharded(ckpt, self.model, self.optimizer, st["optimizer"])
            return st
        # an offloading optimizer's states belong in host memory: never stage them on the GPU
        _, st = load_checkpoint(ckpt, self.model, map_location=self.device, trainer=not offload)
        if offload:
            _, st = load_checkpoint(ckpt, map_location="cpu")
            sync_offloaded_params(self.optimizer)  # its host copies still hold the initial weights
        load_optimizer_state(self.optimizer, st["optimizer"])
        return st

    def _note(self, text: str) -> None:
        """One line for the user, from the main process only."""
        if self.dist.is_main:
            print(f"muse: {text}", flush=True)

    @contextlib.contextmanager
    def _rank0_first(self):
        import torch.distributed as dist

        multi = self.dist.world_size > 1 and dist.is_initialized()
        if multi and not self.dist.is_main:
            dist.barrier()
        yield
        if multi and self.dist.is_main:
            dist.barrier()

    def _schedule_steps(self) -> int | None:
        tc = self.cfg.train
        limits = [tc.max_steps] if tc.max_steps else []
        if tc.max_tokens:
            limits.append(math.ceil(tc.max_tokens / self.tokens_per_step))
        return min(limits) if limits else None  # a time budget alone: constant LR after warm-up

    def _checkpoint_files(self) -> dict[str, bytes]:
        with tempfile.TemporaryDirectory() as tmp:
            self.tokenizer.save(tmp)
            files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        files["config.yaml"] = yaml.safe_dump(to_dict(self.cfg), sort_keys=False).encode()
        return files

    def _open_metrics(self, resume: bool):
        if not self.dist.is_main:
            return None
        path = self.run_dir / "metrics.jsonl"
        if not resume:
            with self._writing(self.run_dir / "config.yaml"):
                (self.run_dir / "config.yaml").write_bytes(self._files["config.yaml"])
        with self._writing(path):
            if resume and path.exists():
                # drop what was logged after the checkpoint we resume from: it will be logged
                # again; so is a line cut short by a crash or a full disk
                keep = [l for l in path.read_text().splitlines() if _logged_step(l) <= self.step]
                tmp = path.with_name(f".{path.name}.tmp")
                try:  # the old log stays whole until the new one is complete
                    tmp.write_text("".join(l + "\n" for l in keep))
                    tmp.replace(path)
                finally:
                    tmp.unlink(missing_ok=True)
            # a new run starts a new log, also where a run that died before its first
            # checkpoint left one behind
            return path.open("a" if resume else "w", buffering=1)

    @property
    def _last_good(self) -> str:
        return f"{self.ckpt_dir} (step {self._ckpt_step})" if self.ckpt_dir else "none written yet"

    @contextlib.contextmanager
    def _writing(self, path: Path):
        """Turn a failed write of the run's logs into one line naming the file and what is kept."""
        try:
            yield
        except OSError as e:
            started = self.step > 0 or self.ckpt_dir is not None
            kept = f"; stopped at step {self.step}. Last good checkpoint: {self._last_good}" if started else ""
            raise TrainingError(f"cannot write {path}: {' '.join(str(e).split())}{kept}") from None

    def _log(self, record: dict) -> None:
        if self._metrics is None:
            return
        with self._writing(Path(self._metrics.name)):
            self._metrics.write(json.dumps(record) + "\n")
        if self.cfg.train.tensorboard and self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.cfg.train.tensorboard = False
                print("muse: tensorboard is not installed; metrics go to metrics.jsonl only", file=sys.stderr)
            else:
                _quiet_tensorboard_thread()  # before its thread starts writing
                with self._writing(self.run_dir / "tensorboard"):
                    self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        if self.cfg.train.wandb and self._wandb is None:
            try:
                import wandb
            except ImportError:
                raise ValueError("train.wandb needs the wandb package: pip install wandb") from None
            self._wandb = wandb.init(project="muse", name=self.cfg.name, config=to_dict(self.cfg))
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            with self._writing(self.run_dir / "tensorboard"):
                for k, v in scalars.items():
                    self._tb.add_scalar(k, v, record["step"])
        if self._wandb is not None:
            self._wandb.log(scalars, step=record["step"])

    def _close_logs(self, check: bool) -> None:
        """Flush and close metrics.jsonl and the tensorboard writer. ``check``: report a failed
        final write (False while another error is on its way out: that one is the news)."""
        writers = ((self._metrics, self.run_dir / "metrics.jsonl"), (self._tb, self.run_dir / "tensorboard"))
        self._metrics = self._tb = None
        for writer, path in writers:
            if writer is None:
                continue
            with self._writing(path) if check else contextlib.suppress(OSError):
                writer.flush()  # tensorboard's close() would not re-raise its writer thread's error
                writer.close()

    # ------------------------------------------------------------------ loop
    def limit_reached(self, t_start: float | None = None) -> tuple[str, str, str] | None:
        """The training budget that is used up, as (key, what was reached, a larger budget to
        continue with), e.g. ``("train.max_steps", "train.max_steps=250 (step 250)", "500")``;
        None while training may go on. ``t_start``: when this process started training."""
        tc = self.cfg.train
        minutes = (self.train_seconds + (0.0 if t_start is None else time.perf_counter() - t_start)) / 60
        if tc.max_steps and self.step >= tc.max_steps:
            return "train.max_steps", f"train.max_steps={tc.max_steps} (step {self.step})", str(2 * self.step)
        if tc.max_tokens and self.tokens >= tc.max_tokens:
            what = f"train.max_tokens={tc.max_tokens} ({self.tokens:,} tokens)"
            return "train.max_tokens", what, str(2 * self.tokens)
        if tc.max_minutes and minutes >= tc.max_minutes:
            more = f"{math.ceil(200 * minutes) / 100:g}"  # twice the time, in whole hundredths
            return "train.max_minutes", f"train.max_minutes={tc.max_minutes:g} ({minutes:.2f} minutes)", more
        return None

    def nothing_to_train(self) -> tuple[str, str, str] | None:
        """For a resumed run: :meth:`limit_reached` if the run has already used up its budget (so
        :meth:`fit` would train nothing), else None. Under DDP every rank must call it."""
        return self.limit_reached() if self._done(time.perf_counter()) else None

    def _done(self, t_start: float) -> bool:
        done = self.limit_reached(t_start) is not None
        if self.dist.world_size > 1:  # ranks must agree, or a time budget could deadlock them
            import torch.distributed as dist

            flag = torch.tensor([float(done)], device=self.device)
            dist.broadcast(flag, 0)
            done = bool(flag.item())
        return done

    def train_step(self) -> torch.Tensor:
        """One optimizer step; returns the mean loss as a device tensor (read later, in batches,
        so the GPU is not synchronised every step)."""
        accum = self.cfg.train.grad_accum
        micro = [self.sampler.get(self.step * accum + i) for i in range(accum)]
        x = torch.stack([m[0] for m in micro]).to(self.device, non_blocking=True)  # (accum, B, N)
        y = torch.stack([m[1] for m in micro]).to(self.device, non_blocking=True)
        if self._captured is not None:
            loss = self._captured(x, y)  # eager warm-up steps, then one CUDA-graph replay per step
        else:
            loss = self.update(x, y)
            self.update.zero_grad()
        self.scheduler.step()
        self.step += 1
        self.tokens += self.tokens_per_step
        return loss

    def _read_losses(self, pending: list[torch.Tensor]) -> list[float]:
        """The losses of the last len(pending) steps; a non-finite one stops training before
        anything is saved, naming its step and the last good checkpoint."""
        mean = torch.stack(pending)
        if self.dist.world_size > 1:  # the loss of the global batch: the mean over the processes
            mean = all_reduce_sum(mean.to(self.device)) / self.dist.world_size
        values = mean.tolist()
        for i, v in enumerate(values):
            if not math.isfinite(v):
                step = self.step - len(values) + 1 + i
                raise TrainingError(
                    f"non-finite loss ({v}) at step {step}; stopped. Last good checkpoint: {self._last_good}"
                )
        return values

    def evaluate(self) -> float:
        self.val_stats: dict[str, float] = {}  # the mixers' diagnostics over the evaluation batches
        nll, n, _ = total_nll(
            self.model, self.data.tokens["valid"], self.cfg.seq_len, self.device,
            self.cfg.train.batch_size, self.cfg.train.eval_tokens, self.autocast, stats=self.val_stats,
        )
        return nll / max(n, 1)

    @property
    def _ckpt_step(self) -> int | None:
        return None if self.ckpt_dir is None else int(self.ckpt_dir.name.split("-")[-1])

    def _restore_rng(self, st: dict, seed: int) -> None:
        """Each rank's RNG streams (dropout) as they were when the checkpoint was written. Under
        another world size, or from a checkpoint that kept rank 0's state only, rank 0 takes that
        and the others a stream of their own from the seed and the step (never rank 0's: ranks
        drawing the same dropout masks would waste the data-parallel batch)."""
        ranks = st.get("rng_ranks") or [st["rng"]]
        same = len(ranks) == self.dist.world_size
        set_rng_state(ranks[self.dist.rank] if same else ranks[0])
        if not same and self.dist.rank > 0:
            torch.manual_seed(seed + 1 + self.dist.rank + 1_000_003 * self.step)

    def save(self, val_loss: float, elapsed: float) -> None:
        improved = val_loss < self.best_val
        self.best_val = min(self.best_val, val_loss)
        sharded = self.parallel == "fsdp"
        rngs = all_gather_object(rng_state())  # a collective: before the ranks part ways
        if not (self.dist.is_main or sharded):
            return
        state = {
            # a sharded checkpoint keeps the optimizer's states beside the model's, in shards
            "optimizer": None if sharded else self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rngs[0], "rng_ranks": rngs, "step": self.step, "tokens": self.tokens,
            "best_val_loss": self.best_val, "train_seconds": self.train_seconds + elapsed,
        }
        meta = {"step": self.step, "tokens": self.tokens, "val_loss": val_loss, "name": self.cfg.name,
                "world_size": self.dist.world_size, "parallel": self.parallel}
        tags = ("last", "best") if improved else ("last",)
        if sharded:
            self.ckpt_dir = save_sharded(self.run_dir, self.model, self.optimizer, state, self._files, tags, meta,
                                         is_main=self.dist.is_main)
        else:
            self.ckpt_dir = save_checkpoint(self.run_dir, self.model, state, self._files, tags=tags, meta=meta)

    def fit(self) -> dict:
        """Train until the budget is reached. Returns a summary: ``steps`` trained by this call
        (0 when a resumed run had already reached its budget), ``val_loss``, the last
        evaluation's (or, when nothing was trained, the one saved with the checkpoint), and
        ``limit``, the budget that stopped it (see :meth:`limit_reached`)."""
        finished = False
        try:
            summary = self._fit()
            finished = True
        finally:
            self._close_logs(check=finished)
        return summary

    def _fit(self) -> dict:
        tc = self.cfg.train
        t_start = time.perf_counter()
        start_step = self.step
        progress = Progress(self.total_steps, self.step, enabled=tc.progress and self.dist.is_main,
                            memory="peak" if self.device.type == "cuda" else "peak RSS")
        val_loss = math.nan
        if self.ckpt_dir is not None:  # until this call evaluates: the resumed checkpoint's
            val_loss = float(read_meta(self.ckpt_dir).get("val_loss", math.nan))
        t_last, tok_last = time.perf_counter(), self.tokens
        done = self._done(t_start)
        pending: list[torch.Tensor] = []
        with progress:
            while not done:
                pending.append(self.train_step())
                done = self._done(t_start)
                evaluating = self.step % tc.eval_every == 0 or done
                if not (self.step % tc.log_every == 0 or evaluating):
                    progress.update(self.step)
                    continue
                loss = self._read_losses(pending)[-1]
                pending = []
                record = None
                if self.step % tc.log_every == 0:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    now = time.perf_counter()
                    record = {
                        "step": self.step, "loss": loss, "lr": float(self.scheduler.get_last_lr()[0]),
                        "tokens": self.tokens, "tokens_per_s": (self.tokens - tok_last) / max(now - t_last, 1e-9),
                        "peak_memory_mib": _peak_memory_mib(self.device),
                    }
                    t_last, tok_last = now, self.tokens
                    self._log(record)
                progress.update(self.step, loss, record)
                if evaluating:
                    val_loss = self.evaluate()
                    self._log({"step": self.step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700)),
                               **self.val_stats})
                    progress.note(f"step {self.step}: val loss {val_loss:.4f}")
                    self.save(val_loss, time.perf_counter() - t_start)
                    # the next throughput window covers training steps only
                    t_last, tok_last = time.perf_counter(), self.tokens
        return {
            "run_dir": str(self.run_dir), "step": self.step, "steps": self.step - start_step, "tokens": self.tokens,
            "val_loss": val_loss, "best_val_loss": self.best_val, "seconds": time.perf_counter() - t_start,
            "limit": self.limit_reached(t_start),
        }


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; infinity for a line that is not a whole record."""
    try:
        return json.loads(line)["step"]
    except (ValueError, TypeError, KeyError):
        return math.inf


def _quiet_tensorboard_thread() -> None:
    """tensorboard writes from a thread: on a full disk that thread prints a traceback, and the
    writer raises the same OSError in the training thread at its next call, where ``_writing``
    reports it in one line. Keep the thread's copy quiet (once per process)."""
    import threading

    previous = threading.excepthook
    if getattr(previous, "_muse", False):
        return

    def hook(args):
        if not (type(args.thread).__name__ == "_AsyncWriterThread" and issubclass(args.exc_type, OSError)):
            previous(args)

    hook._muse = True
    threading.excepthook = hook
