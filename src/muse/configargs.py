"""Derive command-line options from the config dataclasses.

Every leaf field becomes ``--section.key VALUE`` (e.g. ``--model.mixer.semiseparable.max_rank 8``);
values are parsed as YAML scalars/lists (``null``, ``true``, ``[8, 8, 8]``) and validated by the
same dataclasses as the YAML files, so the CLI, presets and config files cannot drift apart.
"""

from __future__ import annotations

import argparse
import difflib

import yaml

from muse.config import Config, ConfigError, flat_keys, from_dict, load_config, set_dotted, to_dict

_PREFIX = "cfg::"
_SKIP = ("name", "description")


def _yaml_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def add_config_arguments(parser: argparse.ArgumentParser, cls=Config) -> None:
    parser.add_argument("config", nargs="?", help="preset name or YAML file (see `muse presets`)")
    parser.add_argument("--preset", help="preset name (same as the positional CONFIG)")
    group = parser.add_argument_group("config overrides (any field of the config dataclasses)")
    for key, tp in flat_keys(cls).items():
        if key in _SKIP:
            continue
        group.add_argument(
            f"--{key}", dest=_PREFIX + key, type=_yaml_value, default=argparse.SUPPRESS,
            metavar=str(tp).replace("typing.", "").replace("<class '", "").replace("'>", ""),
        )


def check_unknown(unknown: list[str], cls=Config) -> None:
    """Turn argparse leftovers into one clear error listing the closest valid keys."""
    if not unknown:
        return
    opt = next((u for u in unknown if u.startswith("--")), unknown[0])
    key = opt.lstrip("-").split("=")[0]
    valid = [k for k in flat_keys(cls) if k not in _SKIP]
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    same = [k for k in valid if k.startswith(section)] if section else []
    hint = f"did you mean {', '.join('--' + c for c in close)}?" if close else ""
    if not hint:
        hint = f"valid keys: {', '.join(same or valid)}"
    raise ConfigError(f"unknown option {opt!r}; {hint}")


def add_alias(parser: argparse.ArgumentParser, flag: str, key: str, **kw) -> None:
    """A short spelling of a config field, e.g. ``--data-dir`` for ``--data.data_dir``."""
    if "action" not in kw:
        kw.setdefault("type", _yaml_value)
    parser.add_argument(flag, dest=_PREFIX + key, default=argparse.SUPPRESS, help=f"same as --{key}", **kw)


def overrides_from_args(args: argparse.Namespace) -> dict:
    return {k[len(_PREFIX):]: v for k, v in vars(args).items() if k.startswith(_PREFIX)}


def config_from_args(args: argparse.Namespace, default: str = "tiny", base: Config | None = None) -> Config:
    """Preset or YAML (or ``base``, e.g. a saved run's config) with the command line's overrides."""
    if args.config and args.preset:
        raise ConfigError("give either a CONFIG argument or --preset, not both")
    if base is not None and not (args.config or args.preset):
        data = to_dict(base)
        for k, v in overrides_from_args(args).items():
            set_dotted(data, k, v)
        return from_dict(Config, data)
    return load_config(args.config or args.preset or default, overrides_from_args(args))
