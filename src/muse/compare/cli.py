"""The ``muse compare`` and ``muse ablate`` command lines (registered by ``muse.cli``).

Both read argument files: ``muse compare @configs/experiments/wikitext2-pareto.args`` takes the
arguments written in that file (shell quoting, ``#`` comments), so an experiment is one
committed file and one command.
"""

from __future__ import annotations

import argparse
import shlex

from muse.config import ConfigError, load_config

EXAMPLES = """examples:
  muse compare baseline standard --dataset wikitext-2 --data-dir DIR --max-tokens 20000000 --batch-size 32
  muse compare baseline baseline+model.d_model=256+model.n_layers=4 --lr 3e-4 1e-3 3e-3 --max-tokens 5e6
  muse compare @configs/experiments/wikitext2-pareto.args
"""


def _args_file_line(line: str) -> list[str]:
    return shlex.split(line, comments=True)


def add_recipe_arguments(p: argparse.ArgumentParser, out: str) -> None:
    p.fromfile_prefix_chars = "@"
    p.convert_arg_line_to_args = _args_file_line
    g = p.add_argument_group("the shared recipe (equal for every model; unset: the models' configs, which must agree)")
    g.add_argument("--dataset", help="pystdlib | wikitext-2 | wikitext-103 | text:PATH")
    g.add_argument("--data-dir", help="local files of wikitext-2/103")
    g.add_argument("--tokenizer", choices=("bpe", "gpt2", "bytes"))
    g.add_argument("--tokenizer-dir", help="gpt2 tokenizer files (encoder.json, vocab.bpe)")
    g.add_argument("--max-tokens", type=int, help="token budget per run")
    g.add_argument("--max-minutes", type=float,
                   help="time budget per run; with --max-tokens a cap, and a run it stops is marked incomplete")
    g.add_argument("--seq-len", type=int, nargs="+", help="training length(s); several: every model at each")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float, nargs="+",
                   help="learning rate(s); several: a sweep, each model's best-validation run represents it")
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--eval-every", type=int, help="steps between validations (checkpoints)")
    g.add_argument("--eval-tokens", type=int, help="validation tokens per evaluation (0: the whole split)")
    g.add_argument("--seed", type=int)
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every model, e.g. --set train.precision=bf16 (repeatable)")
    p.add_argument("--out", default=out, help=f"output folder; rerunning with it skips finished runs (default ./{out})")
    p.add_argument("--runs-dir", help="where training runs and checkpoints go (default OUT/runs)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--jobs", type=int, default=1, metavar="K",
                   help="train K runs at a time on the device, one process each (small models leave a GPU idle); "
                        "their tokens/s are marked shared and not reported as the model's speed")
    p.add_argument("--retry-failed", action="store_true", help="train again runs recorded as failed")
    p.add_argument("--only", nargs="+", metavar="PATTERN",
                   help="train only the runs whose label matches one of these shell patterns now; the reports then "
                        "cover the runs already done (split a comparison across machines: copy rows/ together)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--memory-only", action="store_true",
                   help="measure each model's full-step peak at the recipe and stop (no training): which models "
                        "share a memory budget; writes OUT/memory.json")
    p.add_argument("--title", help="heading of results.md and the plots")


def recipe_from_args(args: argparse.Namespace, first):
    from muse.compare.spec import Recipe, check_key, parse_value

    common = {}
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.precision=bf16")
        check_key(key, f"--set {item!r}")
        common[key] = parse_value(value)
    values = {}
    for opt, key in (("dataset", "data.dataset"), ("data_dir", "data.data_dir"), ("tokenizer", "data.tokenizer"),
                     ("tokenizer_dir", "data.tokenizer_dir"), ("batch_size", "train.batch_size"),
                     ("warmup_steps", "train.warmup_steps"), ("eval_every", "train.eval_every"),
                     ("eval_tokens", "train.eval_tokens"), ("seed", "train.seed")):
        if getattr(args, opt) is not None:
            values[key] = getattr(args, opt)
    if args.max_tokens is not None or args.max_minutes is not None:
        # the budget given replaces the configs' own (a preset's max_steps would cut runs short)
        values.update({"train.max_steps": 0, "train.max_tokens": args.max_tokens or 0,
                       "train.max_minutes": args.max_minutes or 0.0})
    base = load_config(first.source, {**first.overrides, **common, **values})
    seq_lens = tuple(args.seq_len or (base.seq_len,))
    lrs = tuple(args.lr or (base.train.lr,))
    for n in seq_lens:
        if n < 1:
            raise ConfigError(f"--seq-len must be positive; got {n}")
    for lr in lrs:
        if not lr > 0:
            raise ConfigError(f"--lr must be > 0; got {lr:g}")
    if len(set(seq_lens)) != len(seq_lens) or len(set(lrs)) != len(lrs):
        raise ConfigError("--seq-len and --lr values must be distinct")
    return Recipe(values, common, seq_lens, lrs)


def _meta(args, runs, recipe, title: str) -> dict:
    import datetime

    import torch

    c = runs[0].config
    return {
        "benchmark": args.command, "title": args.title or title, "command": "muse " + shlex.join(args.argv),
        # each row records its own device, commit and date; these say when the reports were written
        "report_date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "dataset": c.data.dataset,
        "recipe": {
            "dataset": c.data.dataset, "tokenizer": c.data.tokenizer, "batch_size": c.train.batch_size,
            "seq_lens": list(recipe.seq_lens), "lrs": list(recipe.lrs), "max_tokens": c.train.max_tokens,
            "max_minutes": c.train.max_minutes, "max_steps": c.train.max_steps, "seed": c.train.seed,
            "warmup_steps": c.train.warmup_steps, "min_lr_ratio": c.train.min_lr_ratio,
            "weight_decay": c.train.weight_decay, "grad_clip": c.train.grad_clip, "eval_every": c.train.eval_every,
            "eval_tokens": c.train.eval_tokens, "set": recipe.common,
        },
    }


def run_specs(args, specs, title: str) -> int:
    from muse.compare import compare, resolve
    from muse.compare.run import Options

    recipe = recipe_from_args(args, specs[0])
    runs = resolve(specs, recipe)  # every config validated before anything trains
    meta = _meta(args, runs, recipe, title)
    opts = Options(args.out, args.runs_dir, args.device, args.retry_failed, only=tuple(args.only or ()),
                   command=meta["command"], jobs=args.jobs)
    if args.memory_only:
        from muse.compare import measure_only

        measure_only(runs, opts, meta)
        return 0
    payload = compare(runs, opts, meta, plots=not args.no_plots)
    return 0 if all(r["status"] == "complete" for r in payload["rows"]) else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from muse.compare.spec import parse_spec

    specs = [parse_spec(s) for s in args.models]
    return run_specs(args, specs, "muse compare: " + ", ".join(s.label for s in specs))


def cmd_ablate(args: argparse.Namespace) -> int:
    from muse.compare.spec import grid_specs, one_at_a_time, parse_grid, parse_spec

    base = parse_spec(args.base)
    if args.one_at_a_time == bool(args.grid):
        raise ConfigError("muse ablate needs either --grid KEY=V1,V2 (repeatable) or --one-at-a-time [--toward PRESET]")
    if args.one_at_a_time:
        specs = one_at_a_time(base, parse_spec(args.toward), recipe_from_args(args, base).common)
        if len(specs) == 2:
            raise ConfigError(f"{base.label} and {args.toward} have the same components: nothing to swap")
        title = f"muse ablate: {base.label}, one component at a time toward {args.toward}"
    else:
        specs = grid_specs(base, parse_grid(args.grid))
        title = f"muse ablate: {base.label} over " + " x ".join(g.split("=")[0] for g in args.grid)
    return run_specs(args, specs, title)


def add_commands(sub) -> None:
    p = sub.add_parser(
        "compare", help="train models on identical batches under one budget; results.{json,csv,md} + plots",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="PRESET_OR_YAML[+key=value...], e.g. standard or baseline+model.d_model=256+model.n_layers=4")
    add_recipe_arguments(p, "compare")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "ablate", help="a grid of config overrides of one model, or one component at a time, through compare",
        epilog="examples:\n  muse ablate standard --grid model.ffn.rank=16,32,64 --max-tokens 5000000\n"
               "  muse ablate standard --one-at-a-time --toward baseline --max-tokens 20000000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("base", metavar="BASE", help="PRESET_OR_YAML[+key=value...]")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="one axis of the grid (repeatable: the cartesian product)")
    p.add_argument("--one-at-a-time", action="store_true",
                   help="BASE with one component (embedding, mixer, FFN, head, norm, memory features) taken from "
                        "--toward at a time")
    p.add_argument("--toward", default="baseline", help="the model whose components replace BASE's (default baseline)")
    add_recipe_arguments(p, "ablate")
    p.set_defaults(func=cmd_ablate)
