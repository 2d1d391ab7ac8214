"""Config dataclasses: validation messages name the field, YAML round-trips, presets resolve."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from muse.config import (
    Config, ConfigError, EmbeddingConfig, FFNConfig, HeadConfig, ModelConfig, SemiseparableConfig,
    from_dict, list_presets, load_config, load_raw, save_config, to_dict,
)

CONFIG_PACKAGE = Path(__file__).resolve().parents[1] / "src" / "muse" / "config"


def load_standalone(package_dir: Path, name: str):
    """Import the config package from ``package_dir`` under ``name``, without ``muse``: importing
    ``muse`` would import the model (and torch), which would hide a torch import here."""
    spec = importlib.util.spec_from_file_location(
        name, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_config_package_does_not_import_torch():
    # a fresh interpreter that loads nothing but the package (the loader above, inlined: importing
    # this test module would import muse.config through muse, and with it torch)
    code = (
        "import importlib.util, sys; d = sys.argv[1];"
        "s = importlib.util.spec_from_file_location('cfg_probe', d + '/__init__.py', submodule_search_locations=[d]);"
        "m = importlib.util.module_from_spec(s); sys.modules['cfg_probe'] = m; s.loader.exec_module(m);"
        "subs = sorted(k for k in sys.modules if k.startswith('cfg_probe.'));"
        "print('torch' in sys.modules, 'muse' in sys.modules, ','.join(subs))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(CONFIG_PACKAGE)],
                         capture_output=True, text=True, check=True).stdout
    torch_loaded, muse_loaded, subs = out.split()
    assert (torch_loaded, muse_loaded) == ("False", "False")
    # every module of the package was loaded by the probe, so none of them imports torch
    modules = sorted(f"cfg_probe.{p.stem}" for p in CONFIG_PACKAGE.glob("*.py") if p.stem != "__init__")
    assert subs.split(",") == modules


@pytest.mark.parametrize("layout", ["checkout", "wheel"])
def test_presets_are_found_in_a_checkout_and_in_a_wheel(tmp_path, layout):
    # a checkout: ROOT/src/muse/config/ with ROOT/configs/; a wheel: site-packages/muse/config/ with
    # muse/configs/ beside it (pyproject's force-include)
    package = tmp_path / ("src/muse" if layout == "checkout" else "site-packages/muse")
    presets = tmp_path / "configs" if layout == "checkout" else package / "configs"
    shutil.copytree(CONFIG_PACKAGE, package / "config", ignore=shutil.ignore_patterns("__pycache__"))
    presets.mkdir(parents=True)
    (presets / f"only-{layout}.yaml").write_text("model: {d_model: 96, n_heads: 3}\n")
    name = f"cfg_layout_{layout}"
    try:
        cfg = load_standalone(package / "config", name)
        assert cfg.preset_dirs() == [presets.resolve()]
        assert cfg.list_presets() == [f"only-{layout}"]
        loaded = cfg.load_config(f"only-{layout}")
        assert (loaded.name, loaded.model.d_model, loaded.model.n_heads) == (f"only-{layout}", 96, 3)
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


@pytest.mark.parametrize(
    "data, field",
    [
        ({"model": {"d_model": 130, "n_heads": 4}}, "model.n_heads"),
        ({"model": {"vocab_size": 0}}, "model.vocab_size"),
        ({"model": {"mixer": {"kind": "lstm"}}}, "mixer.kind"),
        ({"model": {"ffn": {"kind": "lowrank"}}}, "ffn.rank"),
        ({"model": {"ffn": {"activation": "relu"}}}, "ffn.activation"),
        ({"model": {"ffn": {"token_chunk": -1}}}, "ffn.token_chunk"),
        ({"model": {"head": {"kind": "tt"}}}, "head.rank"),
        ({"model": {"embedding": {"kind": "tt", "phase": "quantum"}}}, "embedding.phase"),
        ({"model": {"embedding": {"kind": "dense", "phase": "cos"}}}, "embedding.phase"),
        ({"model": {"embedding": {"num_cores": 7}}}, "embedding.num_cores"),
        ({"model": {"mixer": {"semiseparable": {"min_rank": 9, "max_rank": 8}}}}, "min_rank"),
        ({"model": {"mixer": {"semiseparable": {"decay": "sometimes"}}}}, "semiseparable.decay"),
        ({"model": {"mixer": {"semiseparable": {"impl": "fast"}}}}, "semiseparable.impl"),
        ({"model": {"positions": "rope", "d_model": 12, "n_heads": 4}}, "rope"),
        ({"model": {"norm": {"kind": "batchnorm"}}}, "norm.kind"),
        ({"model": {"mixer": {"linear": {"kind": "tt", "rank": 0}}}}, "linear.rank"),
        ({"model": {"d_model": "big"}}, "model.d_model"),
        ({"model": {"dropout": 1.5}}, "model.dropout"),
        ({"train": {"compile_mode": "fast"}}, "train.compile_mode"),
    ],
)
def test_bad_values_name_the_field(data, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        from_dict(Config, data)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        from_dict(Config, {"model": {"d_modle": 128}})
    msg = str(e.value)
    assert "model.d_modle" in msg and "d_model" in msg and "n_layers" in msg


def test_error_message_lists_allowed_values():
    with pytest.raises(ConfigError, match="dense, lowrank, tt"):
        FFNConfig(kind="huge", rank=3)


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="model.n_layers"):
        from_dict(Config, {"model": {"n_layers": True}})


def test_yaml_round_trip(tmp_path):
    cfg = load_config("standard")
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert to_dict(again) == to_dict(cfg)


def test_extends_merges_and_renames():
    raw = load_raw("ultra")
    assert raw["name"] == "ultra"
    assert raw["model"]["vocab_size"] == 10000  # from baseline
    assert raw["model"]["mixer"]["kind"] == "semiseparable"


def test_overrides_apply_and_validate():
    cfg = load_config("tiny", {"model.n_layers": 2, "model.mixer.semiseparable.max_rank": 8})
    assert cfg.model.n_layers == 2 and cfg.model.mixer.semiseparable.max_rank == 8
    with pytest.raises(ConfigError, match="model.mixer.semiseparable.nope"):
        load_config("tiny", {"model.mixer.semiseparable.nope": 1})


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="tiny"):
        load_config("does-not-exist")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_presets_present():
    expected = {
        "tiny", "baseline", "standard", "compact", "ultra", "extreme", "ultimate", "large", "large-standard", "xlarge",
        "xlarge-standard", "phase8-max", "phase8-max-tt", "xxl-100b", "gpt2-124m", "distilgpt2", "hamt-small",
        "hamt-100m",
    }
    assert expected <= set(list_presets())


def test_defaults_are_valid():
    ModelConfig()
    EmbeddingConfig(kind="tt", phase="complex")
    SemiseparableConfig()
    HeadConfig(kind="tied")


def test_cuda_graph_takes_auto_true_or_false():
    from muse.config import TrainConfig

    assert TrainConfig().cuda_graph == "auto"  # the default: the trainer decides and logs why
    for value in ("auto", True, False):
        assert from_dict(Config, {"train": {"cuda_graph": value}}).train.cuda_graph == value
    # the CLI reads values as YAML scalars: true/false arrive as bools, auto as a string
    assert load_config("tiny", {"train.cuda_graph": "auto"}).train.cuda_graph == "auto"
    for bad, needle in (("on-gpu", "must be auto, true or false; got 'on-gpu'"), ("Auto", "got 'Auto'"),
                        (1, "must be of type bool or str; got 1"), (None, "may not be null")):
        with pytest.raises(ConfigError, match="train.cuda_graph") as e:
            from_dict(Config, {"train": {"cuda_graph": bad}})
        assert needle in str(e.value)


def test_cuda_graph_auto_round_trips_and_is_a_cli_option(tmp_path):
    import argparse

    from muse.configargs import add_config_arguments, config_from_args

    cfg = load_config("tiny")
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").train.cuda_graph == "auto"
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    for text, value in (("auto", "auto"), ("true", True), ("false", False)):
        assert config_from_args(parser.parse_args(["tiny", "--train.cuda_graph", text])).train.cuda_graph == value
    with pytest.raises(ConfigError, match="train.cuda_graph must be auto, true or false"):
        config_from_args(parser.parse_args(["tiny", "--train.cuda_graph", "sometimes"]))
