"""The ``muse`` command."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sys

from pathlib import Path

from muse.compare.cli import add_commands as add_compare_commands
from muse.config import OPTIMIZERS, PRECISIONS, ConfigError, list_presets, load_raw
from muse.configargs import add_alias, add_config_arguments, check_unknown, config_from_args


def _human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return str(int(n))


def cmd_params(args: argparse.Namespace) -> int:
    from muse.memory.params import param_report

    cfg = config_from_args(args)
    report = param_report(cfg)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    m = cfg.model
    title = (
        f"{report['name']}: V={m.vocab_size}, d={m.d_model}, L={m.n_layers}, heads={m.n_heads}, N={m.max_seq_len} "
        f"(mixer {m.mixer_layout}, embedding {m.embedding.kind}, ffn {m.ffn.kind}, head {m.head.kind})"
        + (" as transformers' GPT2LMHeadModel" if m.kind == "hf-gpt2" else "")
    )
    table = Table(title=title)
    for col in ("component", "actual", "dense-equivalent", "compression"):
        table.add_column(col, justify="left" if col == "component" else "right")
    for row in report["components"] + [
        {"name": "total", "actual": report["actual_params"], "dense_equivalent": report["dense_equivalent_params"],
         "compression": report["compression"]}
    ]:
        table.add_row(
            row["name"], f"{row['actual']:,} ({_human(row['actual'])})",
            f"{row['dense_equivalent']:,} ({_human(row['dense_equivalent'])})", f"{100 * row['compression']:.2f} %",
        )
    Console().print(table)
    return 0


def _next_commands(
    run_dir: Path, dataset: str, limit: tuple[str, str, str] | None, decodes: bool = True, world: int = 1
) -> list[tuple[str, str]]:
    """(label, command) for what to do with a trained run; README's quickstart shows the same.
    ``limit``: the budget that stopped training (``Trainer.limit_reached``), raised to continue.
    ``decodes``: the model can generate (model.kind muse; hf-gpt2 cannot). ``world``: the
    processes that trained it, which continue it the same way (torchrun)."""
    run = shlex.quote(str(run_dir))
    prompt = shlex.quote("def " if dataset == "pystdlib" else "The ")
    out = [("evaluate", f"muse eval {run} --split test")]
    if decodes:
        out.append(("generate", f"muse generate {run} --prompt {prompt} --seed 0"))
    if limit is not None:
        key, _, more = limit
        out.append(("continue", f"{_launcher(world)} train --resume {run} --{key} {more}"))
    return out


def _launcher(world: int) -> str:
    return "muse" if world == 1 else f"torchrun --nproc-per-node {world} -m muse"


@contextlib.contextmanager
def _process_group():
    """Tear down the process group (torchrun) when the block ends. After success, every process
    first waits for the others to finish their last collective: one still inside it when its
    peer's gloo connections close aborts. After an error, no waiting: the others may never
    arrive, and torchrun stops them once this process has exited."""
    import torch.distributed as dist

    ok = False
    try:
        yield
        ok = True
    finally:
        if dist.is_available() and dist.is_initialized():
            if ok:
                dist.barrier()
            dist.destroy_process_group()


def cmd_train(args: argparse.Namespace) -> int:
    import time

    from muse.train.trainer import Trainer, load_run_config

    if args.resume:
        if args.run_dir is not None:
            raise ConfigError(f"--resume continues a run in its own directory ({args.resume}); drop --run-dir")
        run_dir = Path(args.resume)
        cfg = config_from_args(args, base=load_run_config(run_dir))
    else:
        cfg = config_from_args(args)
        run_dir = Path(args.run_dir or Path(cfg.train.out_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if cfg.model.kind == "hf-gpt2":  # before a run directory is made and the data prepared
        from muse.hf import import_transformers

        import_transformers("model.kind hf-gpt2")
    trainer = Trainer(cfg, run_dir, resume=bool(args.resume))
    main_rank = trainer.dist.is_main
    reached = trainer.nothing_to_train() if args.resume else None
    if reached is not None:
        with _process_group():
            val = trainer.fit()["val_loss"]  # trains nothing: the resumed checkpoint's val loss
        key, what, more = reached
        if main_rank:
            val = f"val loss {val:.4f}" if math.isfinite(val) else "no val loss saved"
            print(
                f"muse train: {run_dir} already reached {what}, {val}; nothing to train. "
                f"Raise --{key} to continue: {_launcher(trainer.dist.world_size)} train --resume "
                f"{shlex.quote(str(run_dir))} --{key} {more}"
            )
        return 0
    if main_rank:
        m, d = trainer.model, trainer.data
        print(
            f"muse train: {cfg.name} ({_human(m.num_params())} parameters, {_human(m.dense_equivalent_params())} "
            f"dense-equivalent) on {d.name} [{d.tokenizer.kind} tokenizer, {d.tokenizer.vocab_size} ids, "
            f"{d.stats['train']['tokens']:,} train tokens], device {trainer.device}, run {run_dir}"
            + (f", resuming at step {trainer.step}" if args.resume else ""),
            flush=True,
        )
    with _process_group():
        summary = trainer.fit()
    if main_rank:
        commands = _next_commands(run_dir, cfg.data.dataset, summary["limit"], decodes=cfg.model.kind == "muse",
                                  world=trainer.dist.world_size)
        print(
            f"\nDone: step {summary['step']}, {summary['tokens']:,} tokens in {summary['seconds']:.0f} s; "
            f"val loss {summary['val_loss']:.4f} (best {summary['best_val_loss']:.4f}).\n"
            + "\n".join(f"  {label + ':':10s} {cmd}" for label, cmd in commands)
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from muse.evaluate import evaluate_checkpoint, evaluate_hf

    if (args.run is None) == (args.hf is None):
        raise ValueError("muse eval scores a MUSE run or checkpoint (RUN_OR_CKPT) or a Hugging Face folder "
                         "(--hf PATH): give exactly one")
    if args.hf is not None:
        for flag, given in (("--tag", args.tag is not None), ("--int8", args.int8)):
            if given:
                raise ValueError(f"{flag} applies to a MUSE run, not to --hf")
        if args.dataset is None:
            raise ValueError("--hf needs --dataset (e.g. --dataset wikitext-2 --data-dir DIR): a Hugging Face "
                             "folder names no dataset")
        res = evaluate_hf(
            args.hf, args.dataset, data_dir=args.data_dir, split=args.split, seq_len=args.seq_len or 0,
            batch_size=args.batch_size, device=args.device, max_tokens=args.max_tokens, cache_dir=args.cache_dir,
        )
    else:
        if args.seq_len is not None:
            raise ValueError("--seq-len applies to --hf; a run is scored at its own train.seq_len")
        res = evaluate_checkpoint(
            args.run, split=args.split, dataset=args.dataset, data_dir=args.data_dir, batch_size=args.batch_size,
            device=args.device, max_tokens=args.max_tokens, tag=args.tag or "last", int8=args.int8,
            cache_dir=args.cache_dir,
        )
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    for k, v in res.items():
        print(f"{k:18s} {v:.4f}" if isinstance(v, float) else f"{k:18s} {v}")
    return 0


def _prompt_text(prompt: str) -> str:
    """The prompt as given, or ValueError if it is not UTF-8: Python's argv turns bytes that are
    not UTF-8 into lone surrogates, which no tokenizer (and no UTF-8 terminal) can take."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        offset = len(prompt[: e.start].encode("utf-8"))
        try:
            raw = prompt.encode("utf-8", "surrogateescape")  # the bytes as they were on the command line
            what = f"byte {raw[offset]:#04x} at byte offset {offset} of {raw!r}"
        except UnicodeEncodeError:  # a surrogate that stands for no byte (not from argv)
            what = f"character {prompt[e.start]!a} at offset {e.start}"
        raise ValueError(f"--prompt is not valid UTF-8 text ({what}); give the prompt as UTF-8") from None
    return prompt


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from muse.generate import check_request, check_sampling, generate
    from muse.runtime import load_for_inference, resolve_device

    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    if args.seed is not None and not -(2**63) <= args.seed < 2**64:  # what torch.Generator takes
        raise ValueError(f"--seed must lie in [-2**63, 2**64); got {args.seed}")
    prompt_text = _prompt_text(args.prompt)
    try:
        dev = resolve_device(args.device)
    except ValueError as e:
        raise ValueError(f"--device {args.device!r}: {e}") from None
    model, cfg, tok, _, _ = load_for_inference(args.run, dev, int8=args.int8)
    ids = tok.encode(prompt_text) if prompt_text else []
    ids = ids or [tok.eos_id]  # an empty prompt starts a new document
    prompt = torch.tensor([ids], device=dev)
    out: list[int] = []
    shown = ""

    def stream(t: int) -> None:
        nonlocal shown
        out.append(t)
        text = tok.decode(out)
        if not text.endswith("\ufffd"):  # wait until a multi-byte character is complete
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text

    check_request(model, prompt, args.max_new_tokens)  # before the prompt is echoed
    sys.stdout.write(prompt_text)
    stats: dict = {}
    generate(
        model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
        eos_id=tok.eos_id, on_token=stream, stats=stats,
    )
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(_speed_line(stats), file=sys.stderr)
    return 0


def _speed_line(s: dict) -> str:
    def rate(n: int, sec: float) -> str:
        return f"{n / sec:,.0f} tok/s" if sec > 0 else "- tok/s"

    return (
        f"muse generate: prompt {s['prompt_tokens']:,} tokens in {s['prompt_s']:.2f} s "
        f"({rate(s['prompt_tokens'], s['prompt_s'])}); generated {s['new_tokens']:,} tokens in {s['decode_s']:.2f} s "
        f"({rate(s['new_tokens'], s['decode_s'])}); device {s['device']}" + (", CUDA graph" if s["cuda_graph"] else "")
    )


def cmd_memory(args: argparse.Namespace) -> int:
    from muse.memory.budget import fmt_bytes, parse_bytes
    from muse.memory.profile import StepPlan, summary_line
    from muse.memory.sharded import run
    from muse.runtime import apply_cublas_workspace

    cfg = config_from_args(args)
    apply_cublas_workspace(cfg.train.cublas_workspace)  # before the first CUDA use
    budget = parse_bytes(args.budget) if args.budget else None
    plan = StepPlan(
        batch=args.batch, seq=args.seq or cfg.model.max_seq_len, precision=args.precision or cfg.train.precision,
        optimizer=args.optimizer or cfg.train.optimizer, checkpointing=args.checkpointing, mode=args.mode,
    )
    res = run(cfg, plan, nproc=args.nproc, budget=budget, device=args.device)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        est = res["method"] == "estimate"
        one = res.get("one_process")  # --nproc K > 1: per-process figures of an FSDP2 step
        table = Table(title=(
            f"{cfg.name}: B={plan.batch}{' per process' if one else ''}, N={plan.seq}, {plan.precision}, "
            f"{res['optimizer'] or 'no optimizer'}, checkpointing {'on' if res['checkpointing'] else 'off'}, "
            f"mode {plan.mode}, CUBLAS_WORKSPACE_CONFIG {res['cublas_workspace']}"
            + (f", FSDP2 over {res['nproc']} processes (rank 0 of a fake process group)" if one else "")
            + (" (ESTIMATE: no CUDA device)" if est else f" (measured on {res['device']})")
        ), caption=(
            "sharding divides parameters, gradients and optimizer state; not the activations of the local batch, "
            "to which FSDP adds the gathered parameters of the blocks in flight" if one else None))
        table.add_column("component")
        table.add_column(("estimate" if est else "measured") + (" per process" if one else ""), justify="right")
        if one:
            table.add_column("one process", justify="right")
        offload = res.get("offload")
        for key, label in (("parameters", "parameters"),
                           ("gradients", "gradients" + (" (kept on the GPU)" if offload else "")),
                           ("optimizer_state", "optimizer state" + (" (kept on the GPU)" if offload else "")),
                           ("workspace", "cuBLAS workspace" + (" (sm90 sizes)" if est else "")),
                           ("activations", "activations + temporaries"), ("peak", "peak")):
            table.add_row(label, fmt_bytes(res[key]), *([fmt_bytes(one[key]) if key in one else ""] if one else []))
        if offload:
            host = offload["host_parameters"] + offload["host_gradients"] + offload["host_optimizer_state"]
            table.add_row("host memory (not in the peak)", fmt_bytes(host))
        if res.get("peak_phase"):
            table.add_row("peak reached in", res["peak_phase"])
        if res.get("tokens_per_s"):
            table.add_row("tokens/s", f"{res['tokens_per_s']:,.0f}")
        Console().print(table)
    if budget is not None or res.get("error"):
        print(summary_line(res), file=sys.stderr if args.json else sys.stdout)
    return 1 if str(res.get("status", "")).startswith("FAIL") else 0


def cmd_verify(args: argparse.Namespace) -> int:
    from muse.memory.verify import run_verify

    res = run_verify(args.out, device=args.device, cublas_workspace=args.cublas_workspace)
    print((Path(args.out) / "verify.md").read_text())
    print(f"wrote {Path(args.out) / 'verify.json'} and verify.md ({res['method']})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from muse.distributed.checkpoint import export_weights

    out = export_weights(args.run, tag=args.tag, out=args.out)
    print(f"muse export: wrote {out}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name in list_presets():
        print(f"{name:16s} {load_raw(name).get('description', '')}")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="muse", description="Language models under tight GPU-memory budgets.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs = {}

    p = sub.add_parser("params", help="actual vs dense-equivalent parameters per component (meta device)")
    add_config_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_params)
    subs["params"] = p

    p = sub.add_parser("train", help="train a model (no arguments: the tiny preset on the local Python stdlib)")
    add_config_arguments(p)
    p.add_argument("--run-dir", help="where checkpoints and metrics go (default: train.out_dir/NAME-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    add_alias(p, "--dataset", "data.dataset")
    add_alias(p, "--data-dir", "data.data_dir", type=str)
    add_alias(p, "--compile", "train.compile", action="store_const", const=True)
    add_alias(p, "--cublas-workspace", "train.cublas_workspace", type=str)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="perplexity, word-level perplexity, bits per byte of a run or checkpoint "
                                    "(or of a Hugging Face folder: --hf)")
    p.add_argument("run", metavar="RUN_OR_CKPT", nargs="?")
    p.add_argument("--hf", metavar="PATH",
                   help="score a local Hugging Face checkpoint folder zero-shot instead (needs --dataset; the "
                        "transformers package: pip install 'muse[hf]')")
    p.add_argument("--seq-len", type=int, help="--hf: tokens per window, at most the model's n_positions "
                                                "(default: n_positions)")
    p.add_argument("--cache-dir", help="the tokenized-data cache (default: the run's data.cache_dir, or ~/.cache/muse)")
    p.add_argument("--split", default="test")
    p.add_argument("--tag", choices=("last", "best"), help="which checkpoint of a run dir (default last)")
    p.add_argument("--dataset", help="evaluate on another dataset (default: the run's)")
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=0, help="stop after about this many tokens (0: whole split)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.add_argument("--int8", action="store_true", help="INT8 weight-only quantized linear layers (torchao)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="sample text from a run or checkpoint")
    p.add_argument("run", metavar="RUN_OR_CKPT")
    p.add_argument("--prompt", default="", help="UTF-8 text to continue (default: a new document)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="at most this many new tokens (>= 1)")
    p.add_argument("--temperature", type=float, default=0.8, help=">= 0; 0 is greedy")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="in [0, 1]: sample among the likeliest tokens holding this much probability (nucleus)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--int8", action="store_true", help="INT8 weight-only quantized linear layers (torchao)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("memory", help="peak memory of a training step: measured on CUDA, estimated elsewhere")
    add_config_arguments(p)
    p.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    p.add_argument("--seq", type=int, default=0, help="tokens per sequence (default model.max_seq_len)")
    p.add_argument("--precision", choices=PRECISIONS, help="default: train.precision")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default: train.optimizer")
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="activation checkpointing per block (default: model.checkpointing)")
    p.add_argument("--mode", choices=("train", "fwdbwd", "infer"), default="train",
                   help="train: full step with optimizer; fwdbwd: forward+backward; infer: forward only")
    add_alias(p, "--cublas-workspace", "train.cublas_workspace", type=str)
    p.add_argument("--budget", help="cap the process at this much GPU memory (8GiB, 500MB, ...): PASS or FAIL")
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu (cpu: estimate)")
    p.add_argument("--nproc", type=int, default=1, metavar="K",
                   help="the per-GPU figures of K processes sharding the step with FSDP2 (train.parallel fsdp; "
                        "--batch per process), from this one process and GPU as rank 0 of a fake process group "
                        "(default 1: one process, no sharding)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_memory)
    subs["memory"] = p

    p = sub.add_parser("verify", help="the original verification suite: verify.md + verify.json")
    p.add_argument("--out", default="verify", help="output directory (default ./verify)")
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu (cpu: estimates)")
    p.add_argument("--cublas-workspace", default="default", metavar="CONFIG",
                   help="CUBLAS_WORKSPACE_CONFIG for the whole run, baseline and presets alike: default "
                        "(torch's size, or the exported variable) | :SIZE_KiB:COUNT..., e.g. :4096:1 or :16:8")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("export", help="a checkpoint's weights as one model.safetensors (e.g. of a sharded FSDP run)")
    p.add_argument("run", metavar="RUN_OR_CKPT")
    p.add_argument("--tag", choices=("last", "best"), default="last", help="which checkpoint of a run dir")
    p.add_argument("--out", help="file or folder to write (default: model.safetensors inside the checkpoint)")
    p.set_defaults(func=cmd_export)

    add_compare_commands(sub)  # compare, ablate

    p = sub.add_parser("presets", help="list the shipped presets")
    p.set_defaults(func=cmd_presets)
    subs["presets"] = p
    return parser, subs


def main(argv: list[str] | None = None) -> int:
    rc = _run(argv)
    if argv is None:  # a command line, not a call from Python
        from muse.distributed import exit_process, under_torchrun

        if under_torchrun():
            exit_process(rc)
    return rc


def _run(argv: list[str] | None) -> int:
    from muse.data import DataError
    from muse.train.checkpoint import CheckpointError
    from muse.train.trainer import TrainingError

    parser, _ = build_parser()
    args, unknown = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed: results record their command
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        check_unknown(unknown)
        return args.func(args)
    except BrokenPipeError:
        # the reader left (`muse eval ... | head`): stop quietly, as Unix tools do; stdout goes to
        # /dev/null so the interpreter's final flush cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ConfigError, DataError, CheckpointError, TrainingError, ValueError, OSError) as e:
        print(f"muse: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("muse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m muse.cli
    sys.exit(main())
