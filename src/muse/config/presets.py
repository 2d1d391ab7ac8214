"""The top-level ``Config`` and the presets: finding ``configs/*.yaml``, resolving ``extends``
chains, applying dotted overrides, saving a config back to YAML.

``Config`` lives here, beside the loader, because it is what a preset file holds and because its
checks span sections (sequence length against the model, CUDA-graph capture against the model's
host-syncing paths).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .checks import ConfigError
from .io import deep_merge, from_dict, set_dotted, to_dict
from .model import ModelConfig
from .train import DataConfig, TrainConfig


@dataclass
class Config:
    """Top-level config: what a preset YAML holds."""

    name: str = "custom"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.train.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"train.seq_len ({self.train.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})"
            )
        if self.train.cuda_graph is True and (conflict := self.cuda_graph_conflict()):
            raise ConfigError(conflict[1])

    def cuda_graph_conflict(self) -> tuple[str, str] | None:
        """:meth:`TrainConfig.cuda_graph_conflict`, and the model paths that read device values on the
        host during a step (a capture refuses those): (short reason, error), or None."""
        if conflict := self.train.cuda_graph_conflict():
            return conflict
        m, emb = self.model, self.model.embedding
        if m.kind == "hf-gpt2":
            return (
                "model.kind hf-gpt2 (capturing the transformers model's step is not verified)",
                "train.cuda_graph true does not combine with model.kind hf-gpt2 (capturing the transformers "
                "model's step is not verified); set train.cuda_graph auto or false",
            )
        if m.checkpointing and m.dropout > 0:
            return (
                "activation checkpointing with dropout (saves and restores the CUDA RNG state on the host)",
                "train.cuda_graph does not combine model.checkpointing with model.dropout > 0 (each checkpointed "
                "block saves and restores the CUDA RNG state on the host to replay its dropout); turn one of them "
                "off, or set train.cuda_graph auto or false",
            )
        if emb.kind == "tt" and (emb.gather_impl == "torch" or emb.phase == "complex"):
            what, fix = (("embedding.gather_impl torch", "use embedding.gather_impl auto or triton")
                         if emb.gather_impl == "torch" else ("embedding.phase complex", "use phase none or cos"))
            return (
                f"{what}: the torch TT row gather deduplicates ids on the host",
                f"train.cuda_graph does not combine with {what} (the torch TT row gather deduplicates the batch's "
                f"ids with torch.unique, a host sync); {fix}, or set train.cuda_graph auto or false",
            )
        return None

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model.max_seq_len


def preset_dirs() -> list[Path]:
    """Installed wheels carry the presets inside the package (``muse/configs``, pyproject's
    force-include); a source checkout has them at the repository root (``src/muse/..`` twice up)."""
    package = Path(__file__).resolve().parents[1]  # muse/ (this file is muse/config/presets.py)
    return [p for p in (package / "configs", package.parents[1] / "configs") if p.is_dir()]


def list_presets() -> list[str]:
    names = set()
    for d in preset_dirs():
        names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def _find_preset(name: str) -> Path:
    for d in preset_dirs():
        p = d / f"{name}.yaml"
        if p.is_file():
            return p
    raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(list_presets())}")


def load_raw(name_or_path: str | Path, _seen: tuple = ()) -> dict:
    """Read a preset name or YAML path into a dict, resolving ``extends`` chains."""
    s = str(name_or_path)
    path = Path(s) if (s.endswith((".yaml", ".yml")) or "/" in s) else _find_preset(s)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"circular 'extends' in {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    own_name = data.get("name")
    parent = data.pop("extends", None)
    if parent is not None:
        data = deep_merge(load_raw(parent, _seen + (path.resolve(),)), data)
    data["name"] = own_name or path.stem  # an inheriting preset is never named after its parent
    return data


def load_config(name_or_path: str | Path = "tiny", overrides: dict | None = None) -> Config:
    """Load a preset by name (``configs/NAME.yaml``) or a YAML file, then apply dotted overrides."""
    data = load_raw(name_or_path)
    for k, v in (overrides or {}).items():
        set_dotted(data, k, v)
    return from_dict(Config, data)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
