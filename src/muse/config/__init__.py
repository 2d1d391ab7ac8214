"""Typed configuration for MUSE models.

Every YAML key is a dataclass field name; every value is validated in ``__post_init__`` with a
message that names the field and the allowed values. No module of this package imports torch,
so configs can be read, checked and printed on any machine in milliseconds (the submodules
import one another relatively, so the package also loads on its own, without ``muse``).

Presets live in ``configs/*.yaml`` and may inherit from one another with ``extends: NAME``.

The package is split by what a config describes: ``model.py`` (the model's sections),
``train.py`` (data and training), ``io.py`` (dicts to dataclasses and back), ``presets.py``
(the top-level ``Config`` and preset loading), ``checks.py`` (the error and shared checks).
Everything is re-exported here, so callers import from ``muse.config`` only.
"""

from __future__ import annotations

from .checks import ConfigError, check_choice, check_positive
from .io import deep_merge, field_types, flat_keys, flatten, from_dict, set_dotted, to_dict
from .model import (
    FFN_IMPLS,
    HOLOGRAPHIC_IMPLS,
    LINEAR_KINDS,
    LOSS_IMPLS,
    MIXER_KINDS,
    MODEL_KINDS,
    SCAN_IMPLS,
    AttentionConfig,
    EmbeddingConfig,
    FFNConfig,
    HeadConfig,
    HolographicConfig,
    LinearConfig,
    MixerConfig,
    ModelConfig,
    NormConfig,
    SemiseparableConfig,
    hf_gpt2_conflicts,
)
from .presets import Config, list_presets, load_config, load_raw, preset_dirs, save_config
from .train import (
    COMPILE_MODES,
    CUDA_GRAPH_OPTIMIZERS,
    DATA_DIR_DATASETS,
    DATASETS,
    OPTIMIZERS,
    PARALLEL,
    PRECISIONS,
    DataConfig,
    TrainConfig,
    check_cublas_workspace,
)

__all__ = [
    "COMPILE_MODES", "CUDA_GRAPH_OPTIMIZERS", "DATASETS", "DATA_DIR_DATASETS", "FFN_IMPLS", "HOLOGRAPHIC_IMPLS",
    "LINEAR_KINDS", "LOSS_IMPLS", "MIXER_KINDS", "MODEL_KINDS", "OPTIMIZERS", "PARALLEL", "PRECISIONS", "SCAN_IMPLS",
    "AttentionConfig", "Config", "ConfigError", "DataConfig", "EmbeddingConfig", "FFNConfig", "HeadConfig",
    "HolographicConfig", "LinearConfig", "MixerConfig", "ModelConfig", "NormConfig", "SemiseparableConfig",
    "TrainConfig", "check_choice", "check_cublas_workspace", "check_positive", "deep_merge", "field_types",
    "flat_keys", "flatten", "from_dict", "hf_gpt2_conflicts", "list_presets", "load_config", "load_raw", "preset_dirs",
    "save_config", "set_dotted", "to_dict",
]
