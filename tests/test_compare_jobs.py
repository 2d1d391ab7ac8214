"""``muse compare --jobs``: worker processes sharing the device (``muse.compare.jobs``)."""

import json
from pathlib import Path

import pytest

from muse.cli import main
from tests.compare_runs import TINY, common_args, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def test_jobs_share_the_device_and_keep_its_speed_apart(corpus, tmp_path, capsys):
    """--jobs 2: two worker processes train an lr sweep; each shared run scores as it would alone
    and its tokens/s are kept apart; the report borrows the model's solo tokens/s, named so."""
    out, cache = tmp_path / "jobs", tmp_path / "cache"
    common = common_args(corpus, cache, out)
    assert main(["compare", TINY, *common, "--lr", "1e-3", "--jobs", "2"]) == 0  # one run: no workers
    assert main(["compare", TINY, *common, "--lr", "1e-3", "3e-3", "1e-2", "--jobs", "2"]) == 0
    assert "2 runs to train with 2 workers" in capsys.readouterr().out
    assert not (out / "claims").exists()
    rows = {r["lr"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    solo = rows[1e-3]
    assert "device_shared_by" not in solo and solo["tokens_per_s_median"] > 0
    for lr in (3e-3, 1e-2):
        r = rows[lr]
        assert r["status"] == "complete" and r["device_shared_by"] == 2 and r["tokens_per_s_shared_median"] > 0
        assert r["tokens_per_s_median"] == solo["tokens_per_s_median"] and r["tokens_per_s_from"]["lr"] == 1e-3
        [path] = (out / "rows").glob(f"*lr-{lr:g}-*.json")
        assert json.loads(path.read_text())["tokens_per_s_median"] is None  # the row itself claims no speed
    assert "(lr 0.001 run)" in (out / "results.md").read_text()

    # quality does not depend on sharing: the same run alone gives the same validation curve
    alone = tmp_path / "alone"
    assert main(["compare", TINY, *common_args(corpus, cache, alone), "--lr", "3e-3"]) == 0
    [r] = json.loads((alone / "results.json").read_text())["rows"]
    assert [v for _, v in r["val_curve"]] == pytest.approx([v for _, v in rows[3e-3]["val_curve"]], rel=1e-4)


def test_jobs_must_be_positive(corpus, tmp_path, capsys):
    assert main(["compare", TINY, *common_args(corpus, tmp_path / "c", tmp_path / "o"), "--jobs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "muse: error: --jobs must be >= 1; got 0"


def test_a_worker_ends_on_a_user_error_with_one_line(corpus, tmp_path, capsys):
    import argparse
    import shutil

    from muse.compare import jobs, parse_spec, resolve
    from muse.compare.cli import add_recipe_arguments, recipe_from_args
    from muse.compare.run import Options

    p = argparse.ArgumentParser()
    add_recipe_arguments(p, "compare")
    gone = tmp_path / "gone"
    shutil.copytree(corpus, gone)
    spec = parse_spec(TINY)
    runs = resolve([spec], recipe_from_args(p.parse_args(common_args(gone, tmp_path / "cache", tmp_path / "out")), spec))
    shutil.rmtree(gone)  # the corpus disappears before the worker reads it
    opts = Options(tmp_path / "out", jobs=2)
    (opts.out / "claims").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        jobs.worker(runs, opts, 3)
    assert e.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("muse: error: [worker 3] ") and "gone" in line  # names what is missing


def test_a_shared_run_out_of_memory_is_left_to_train_alone():
    from muse.compare.jobs import shared_oom

    oom = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert shared_oom({"status": "failed", "status_detail": oom})
    assert shared_oom({"status": "complete", "status_detail": "20,004,864 tokens", "peak_memory_error": oom})
    assert not shared_oom({"status": "failed", "status_detail": "the loss is not finite at step 12"})
    assert not shared_oom({"status": "complete", "status_detail": "4,096 tokens", "peak_memory_error": None})
