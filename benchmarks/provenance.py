"""Which preset a recorded figure measured, in today's names.

A preset's name outlives its config: `standard` was rebuilt (December 2026: one attention layer,
a dense embedding tied to the head) and its old config ships as `compact`. A result row names the
preset it ran, so the tables must not print an old config's figure under the name's new meaning.
Rows that record their model config (the throughput, decode and decode-memory benchmarks) are
matched on it, less what a run sets for itself (length, dropout, checkpointing, and the `*impl`
keys: which kernels run the same arithmetic); `muse verify`'s rows, which record sizes only, on
the parameter count.
"""

from __future__ import annotations

import json
from functools import lru_cache

RUN_KEYS = ("model.max_seq_len", "model.dropout", "model.checkpointing")


def model_identity(model: dict) -> tuple:
    """A recorded model section as a comparable value: its keys away from their defaults (a field
    added since, at a default that keeps the old behaviour, does not change it), less RUN_KEYS and
    the kernel choices."""
    from muse.compare.spec import identity

    return tuple(sorted((k, json.dumps(v)) for k, v in identity({"model": model}).items()
                        if k not in RUN_KEYS and not k.endswith("impl")))


def _over_presets(value) -> dict:
    """{preset: value(preset)} over the shipped presets, leaving out those ``value`` refuses."""
    from muse.config import ConfigError, list_presets

    out = {}
    for name in list_presets():
        try:
            out[name] = value(name)
        except ConfigError:  # e.g. an override this preset cannot take
            continue
    return out


@lru_cache(maxsize=None)
def _preset_models(overrides: str = "{}") -> dict[str, tuple]:
    """{preset: model identity} of every shipped preset, with a run's ``--set`` overrides (JSON)."""
    from muse.config import load_config, to_dict

    return _over_presets(lambda n: model_identity(to_dict(load_config(n, json.loads(overrides)))["model"]))


@lru_cache(maxsize=None)
def _preset_params() -> dict[str, int]:
    """{preset: parameter count} as the presets ship."""
    from muse.config import load_config
    from muse.memory.params import param_report

    return _over_presets(lambda n: param_report(load_config(n))["actual_params"])


def current_name(preset: str, *, model: dict | None = None, params: int | None = None,
                 mixer: str | None = None, overrides: dict | None = None) -> str | None:
    """The preset that ships the recorded model today: ``preset`` itself when unchanged, else the
    preset whose model it is (a renamed config), else None. Matched on the recorded model section
    if there is one (against the presets with the run's ``overrides``), else on the parameter
    count, else on the mixer layout (which names no other preset: several share one); a row that
    records none of them is taken at its word."""
    if model is not None:
        ident, models = model_identity(model), _preset_models(json.dumps(overrides or {}, sort_keys=True))
        if models.get(preset) == ident:
            return preset
        return next((n for n, m in sorted(models.items()) if m == ident), None)
    if params is not None:
        counts = _preset_params()
        if counts.get(preset) == params:
            return preset
        return next((n for n, c in sorted(counts.items()) if c == params), None)
    if mixer is not None:
        from muse.config import ConfigError, load_config

        try:
            return preset if load_config(preset).model.mixer_layout == mixer else None
        except ConfigError:
            return None
    return preset


def is_current(preset: str, **recorded) -> bool:
    """Whether a row of ``preset`` measured it as it ships now (``recorded``: model, params, mixer
    or overrides, as :func:`current_name` takes them)."""
    return current_name(preset, **recorded) == preset


def label(preset: str, **recorded) -> str:
    """A table cell naming a recorded preset: `name`; `new` (run as `old`) for a renamed config;
    `name` (an earlier config) for one no preset ships any more."""
    now = current_name(preset, **recorded)
    if now == preset:
        return f"`{preset}`"
    return f"`{now}` (run as `{preset}`)" if now else f"`{preset}` (an earlier config)"
