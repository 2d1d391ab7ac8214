"""DataConfig refuses directories its dataset or tokenizer would never read (they used to be
ignored without a word: `muse train --data-dir DIR` trained on pystdlib)."""

import pytest

from muse.cli import main
from muse.config import Config, ConfigError, DataConfig, from_dict, to_dict


@pytest.mark.parametrize("dataset", ["pystdlib", "text:corpus.txt"])
def test_data_dir_with_a_dataset_that_does_not_read_it(dataset):
    with pytest.raises(ConfigError) as exc:
        DataConfig(dataset=dataset, data_dir="/some/dir")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "data.data_dir" in msg and "wikitext-2" in msg and f"data.dataset is {dataset}" in msg
    assert "--dataset text:PATH" in msg


@pytest.mark.parametrize("dataset", ["wikitext-2", "wikitext-103"])
def test_data_dir_with_wikitext_is_accepted(dataset):
    assert DataConfig(dataset=dataset, data_dir="/some/dir").data_dir == "/some/dir"


@pytest.mark.parametrize("tokenizer", ["bpe", "bytes"])
def test_tokenizer_dir_without_gpt2(tokenizer):
    with pytest.raises(ConfigError, match=f"data.tokenizer_dir is only read by data.tokenizer gpt2.*is {tokenizer}"):
        DataConfig(tokenizer=tokenizer, tokenizer_dir="/some/gpt2")
    assert DataConfig(tokenizer="gpt2", tokenizer_dir="/some/gpt2").tokenizer_dir == "/some/gpt2"


def test_saved_configs_from_before_the_check_still_load():
    """A run saved while unread directories were ignored must still resume and evaluate."""
    raw = to_dict(Config())
    raw["data"].update(dataset="pystdlib", data_dir="/was/ignored", tokenizer="bpe", tokenizer_dir="/was/ignored")
    with pytest.raises(ConfigError):
        from_dict(Config, raw)
    cfg = from_dict(Config, DataConfig.saved(raw))
    assert cfg.data.data_dir is None and cfg.data.tokenizer_dir is None and cfg.data.dataset == "pystdlib"
    kept = to_dict(Config())
    kept["data"].update(dataset="wikitext-2", data_dir="/wt2", tokenizer="gpt2", tokenizer_dir="/gpt2")
    assert DataConfig.saved(kept) == kept


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--data-dir", "{empty}"], "data.dataset is pystdlib"),  # the default dataset
        (["--dataset", "text:{empty}", "--data-dir", "{empty}"], "data.data_dir"),
        (["--dataset", "wikitext-2", "--data-dir", "{empty}"], "has no WikiText-2 files: expected train.txt"),
        (["--dataset", "text:{empty}"], "has no UTF-8 text files"),
        (["--data.tokenizer_dir", "{empty}"], "data.tokenizer_dir"),
    ],
)
def test_train_with_an_unusable_data_dir_is_one_line(tmp_path, capsys, args, needle):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty") for a in args]
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--data.cache_dir", str(tmp_path / "cache"), *args]) == 2
    out, err = capsys.readouterr()
    assert needle in err and err.startswith("muse: error: ") and err.count("\n") == 1, err
    run = tmp_path / "run"
    assert not out and (not run.exists() or not any(run.iterdir()))  # refused before anything was written
