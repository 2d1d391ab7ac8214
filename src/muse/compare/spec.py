"""What a comparison trains: model specs, the shared recipe, ablation grids (no torch import).

A *spec* is one model to compare: a preset or YAML file plus dotted overrides, written on the
command line as ``PRESET+key=value+key=value`` (``baseline+model.d_model=256+model.n_layers=4``).
The *recipe* is everything that must be equal across the models for the comparison to be
fair (data, tokenizer, batches, token or time budget, schedule, seed); :func:`resolve` puts it
into every config and refuses a spec that overrides any of it. Memory features
(``train.precision``, ``train.optimizer``, ``model.checkpointing``) belong to the model, as it
ships, unless ``--set`` overrides them for every model alike.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field

import yaml

from muse.config import Config, ConfigError, flat_keys, flatten, load_config, load_raw, to_dict

# keys that define the comparison, not the model: equal for every row
RECIPE_KEYS = (
    "data.dataset", "data.data_dir", "data.tokenizer", "data.tokenizer_dir", "data.cache_dir",
    "model.vocab_size", "train.seed", "train.batch_size", "train.seq_len", "train.grad_accum",
    "train.max_steps", "train.max_tokens", "train.max_minutes", "train.lr", "train.min_lr_ratio",
    "train.warmup_steps", "train.weight_decay", "train.beta1", "train.beta2", "train.grad_clip",
    "train.eval_every", "train.eval_tokens", "model.dropout",
)
# keys that change nothing a row measures (where it runs, how it logs): left out of its identity
VOLATILE_KEYS = ("name", "description", "data.cache_dir", "train.out_dir", "train.progress", "train.tensorboard", "train.wandb",
                 "train.log_every", "train.device")
# the parts one-at-a-time ablation swaps, each with the keys that travel together
COMPONENTS = {
    "embedding": ("model.embedding",),
    # attention brings its positions, an O(N) mixer drops them; a hybrid's attention layers go with the mixer
    "mixer": ("model.mixer", "model.positions", "model.attention_layers"),
    "ffn": ("model.ffn",),
    "head": ("model.head",),
    "norm": ("model.norm",),
    "memory features": ("train.precision", "train.optimizer", "model.checkpointing"),
}
_OVERRIDE = re.compile(r"\+(?=[A-Za-z_][\w.]*=)")  # '+' that starts 'key=' (1e+3 stays a value)


def parse_value(text: str):
    """A command-line value as YAML reads it (``8``, ``1e-3``, ``true``, ``[8, 8]``, ``null``)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def check_key(key: str, what: str) -> None:
    """Refuse a dotted key that is no config field, naming it and the closest valid ones."""
    import difflib

    keys = [k for k in flat_keys(Config) if k not in ("name", "description")]
    sections = {k.rsplit(".", i)[0] for k in keys for i in (1, 2, 3) if k.count(".") >= i}
    if key in keys or key in sections:
        return
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"{what}: unknown config key {key!r}{hint}")


@dataclass
class Spec:
    """One model of a comparison: ``source`` (preset or YAML) plus ``overrides`` (dotted keys)."""

    source: str
    overrides: dict = field(default_factory=dict)
    label: str = ""

    def __post_init__(self):
        if not self.label:
            parts = [f"{k.split('.', 1)[-1] if k.startswith(('model.', 'train.')) else k}={_short(v)}"
                     for k, v in self.overrides.items()]
            self.label = "+".join([self.source.rsplit("/", 1)[-1].removesuffix(".yaml")] + parts)

    def with_overrides(self, overrides: dict, label: str | None = None) -> Spec:
        return Spec(self.source, {**self.overrides, **overrides}, label or "")


def _short(v) -> str:
    return json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else str(v)


def parse_spec(text: str) -> Spec:
    """``PRESET_OR_YAML[+key=value...]`` → Spec; a malformed part is a one-line error."""
    source, *parts = _OVERRIDE.split(text)
    if not source or "=" in source:
        raise ConfigError(f"model spec {text!r}: expected PRESET_OR_YAML[+key=value...], e.g. baseline+model.d_model=256")
    overrides = {}
    for part in parts:
        key, _, value = part.partition("=")
        check_key(key, f"model spec {text!r}")
        overrides[key] = parse_value(value)
    return Spec(source, overrides)


def split_values(text: str) -> list[str]:
    """``a,b,[1,2]`` → ``['a', 'b', '[1,2]']``: commas inside brackets or braces stay."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v.strip() for v in out]


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["key=v1,v2", ...]`` → {key: [v1, v2]}; bad syntax or an unknown key names it."""
    grid: dict[str, list] = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        if not eq or not key or not values.strip():
            raise ConfigError(f"--grid {item!r}: expected key=value1,value2,... (e.g. model.ffn.rank=16,32)")
        check_key(key, f"--grid {item!r}")
        vals = split_values(values)
        if any(v == "" for v in vals):
            raise ConfigError(f"--grid {item!r}: empty value in {values!r}")
        if key in grid:
            raise ConfigError(f"--grid {item!r}: {key} is given twice")
        grid[key] = [parse_value(v) for v in vals]
    return grid


def grid_specs(base: Spec, grid: dict[str, list]) -> list[Spec]:
    """The cartesian product of the grid's overrides on ``base``, in the order given."""
    keys = list(grid)
    return [base.with_overrides(dict(zip(keys, combo))) for combo in itertools.product(*(grid[k] for k in keys))]


def _get(d: dict, dotted: str):
    for k in dotted.split("."):
        d = d[k]
    return d


def one_at_a_time(base: Spec, toward: Spec, common: dict | None = None) -> list[Spec]:
    """``base``, ``toward``, and ``base`` with one component (embedding, mixer, FFN, head, norm,
    memory features) taken from ``toward`` at a time: what each part of ``base`` costs or saves.
    Components on which the two agree once ``common`` (the ``--set`` overrides every model gets)
    is applied are skipped: swapping them would train ``base`` again under another name."""
    a = to_dict(_load(base, common))
    b = to_dict(_load(toward, common))
    out = [base, toward]
    for name, keys in COMPONENTS.items():
        swap = {k: copy.deepcopy(_get(b, k)) for k in keys if _get(a, k) != _get(b, k)}
        if swap:
            out.append(base.with_overrides(swap, label=f"{base.label} with {toward.label}'s {name}"))
    return out


def _load(spec: Spec, extra: dict | None = None) -> Config:
    return load_config(spec.source, {**spec.overrides, **(extra or {})})


@dataclass
class Recipe:
    """The shared recipe: dotted recipe keys → value, and ``--set`` keys applied to every model."""

    values: dict
    common: dict = field(default_factory=dict)
    seq_lens: tuple[int, ...] = (512,)
    lrs: tuple[float, ...] = (1e-3,)


@dataclass
class Run:
    """One training run of a comparison: a spec at one sequence length and learning rate."""

    spec: Spec
    seq_len: int
    lr: float
    config: Config
    key: str  # a short name of its identity (run_key), for file names
    group: str  # the spec's label (@N with several lengths): runs of a group differ by lr only
    multi_lr: bool = False  # part of an lr sweep: the label names the lr

    @property
    def label(self) -> str:
        return self.group + (f" lr={self.lr:g}" if self.multi_lr else "")


def identity(config: dict) -> dict:
    """What a run's results depend on: its flat config without the volatile keys, and without
    the keys at their default values (so a field added later, at a default that keeps today's
    behaviour, does not change the identity of runs made before it existed)."""
    defaults = flatten(to_dict(Config()))
    return {k: v for k, v in flatten(config).items()
            if k not in VOLATILE_KEYS and not (k in defaults and defaults[k] == v)}


def same_run(saved: dict, cfg: Config) -> bool:
    """Whether a row's saved config describes the run ``cfg`` would make: equal on every key,
    where a key the saved config lacks (a field added since) must be at its default now."""
    return identity(saved) == identity(to_dict(cfg))


def run_key(cfg: Config) -> str:
    """A short name for the run's identity (file names); :func:`same_run` decides reuse."""
    return hashlib.sha256(json.dumps(identity(to_dict(cfg)), sort_keys=True).encode()).hexdigest()[:16]


def resolve(specs: list[Spec], recipe: Recipe) -> list[Run]:
    """Every (spec, sequence length, learning rate) as a validated config with the recipe in it.
    Refuses a spec that overrides a recipe key, and a set of models that would not see the same
    batches (a different vocabulary after all)."""
    runs: list[Run] = []
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        dup = next(label for label in labels if labels.count(label) > 1)
        raise ConfigError(f"model {dup!r} is given twice")
    for spec in specs:
        for key in spec.overrides:
            if any(key == r or key.startswith(r + ".") or r.startswith(key + ".") for r in RECIPE_KEYS):
                raise ConfigError(
                    f"model {spec.label!r} overrides {key}, which is part of the shared recipe; set it for every "
                    f"model with the command's options or --set"
                )
        load_raw(spec.source)  # an unknown preset or file: its own error, naming it
        for n in recipe.seq_lens:
            for lr in recipe.lrs:
                extra = {**recipe.values, **recipe.common, "train.seq_len": n, "train.lr": lr}
                try:
                    # a learned position table must cover the longest training length
                    if n > _load(spec, recipe.common).model.max_seq_len:
                        extra["model.max_seq_len"] = n
                    cfg = _load(spec, extra)
                except ConfigError as e:
                    raise ConfigError(f"model {spec.label!r}: {e}") from None
                cfg.name = spec.label
                group = spec.label + (f"@{n}" if len(recipe.seq_lens) > 1 else "")
                runs.append(Run(spec, n, lr, cfg, run_key(cfg), group, multi_lr=len(recipe.lrs) > 1))
    flat = [{k: _get(to_dict(r.config), k) for k in RECIPE_KEYS} for r in runs]
    for r, f in zip(runs[1:], flat[1:]):
        for k in RECIPE_KEYS:
            if k not in ("train.seq_len", "train.lr") and f[k] != flat[0][k]:
                raise ConfigError(
                    f"models {runs[0].group!r} and {r.group!r} differ in {k} ({flat[0][k]!r} vs {f[k]!r}), which is "
                    f"part of the shared recipe; set it for every model with --set {k}=VALUE"
                )
    return runs
