"""The ``muse`` command."""

from __future__ import annotations

import argparse
import json
import sys

from muse.config import ConfigError, list_presets, load_raw
from muse.configargs import add_config_arguments, check_unknown, config_from_args


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
        f"(mixer {m.mixer.kind}, embedding {m.embedding.kind}, ffn {m.ffn.kind}, head {m.head.kind})"
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

    p = sub.add_parser("presets", help="list the shipped presets")
    p.set_defaults(func=cmd_presets)
    subs["presets"] = p
    return parser, subs


def main(argv: list[str] | None = None) -> int:
    parser, _ = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        check_unknown(unknown)
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"muse: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m muse.cli
    sys.exit(main())
