"""MUSE: language models under tight GPU-memory budgets."""

from muse.config import Config, ConfigError, ModelConfig, list_presets, load_config
from muse.model import LMOutput, MuseLM, build_model

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "ModelConfig", "LMOutput", "MuseLM", "build_model", "list_presets", "load_config"]
