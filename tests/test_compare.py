"""muse compare / muse ablate: specs, recipe checks, ranking rules, and whole runs on tiny models."""

import json
import math
from pathlib import Path

import pytest

from muse.cli import main
from muse.compare import report
from muse.compare.spec import (
    COMPONENTS, Recipe, grid_specs, one_at_a_time, parse_grid, parse_spec, resolve, split_values,
)
from muse.config import ConfigError
from tests.compare_runs import TINY, common_args, write_corpus
from tests.compare_runs import result_row as _row

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- specs and grids
def test_parse_spec_overrides_and_label():
    s = parse_spec("baseline+model.d_model=256+model.n_layers=4+model.init_std=1.5e+0")
    assert s.source == "baseline"
    assert s.overrides == {"model.d_model": 256, "model.n_layers": 4, "model.init_std": 1.5}  # 1.5e+0 stays one value
    assert s.label == "baseline+d_model=256+n_layers=4+init_std=1.5"


@pytest.mark.parametrize("text, needle", [
    ("baseline+model.d_modle=256", "unknown config key 'model.d_modle'; did you mean model.d_model"),
    ("=3", "expected PRESET_OR_YAML"),
])
def test_parse_spec_errors_name_the_part(text, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        parse_spec(text)


def test_split_values_keeps_brackets():
    assert split_values("1,[2,3],{a: 1, b: 2}, x") == ["1", "[2,3]", "{a: 1, b: 2}", "x"]


def test_grid_is_the_cartesian_product_in_order():
    grid = parse_grid(["model.ffn.rank=8,16", "model.mixer.semiseparable.max_rank=4,8"])
    specs = grid_specs(parse_spec("standard"), grid)
    assert [(s.overrides["model.ffn.rank"], s.overrides["model.mixer.semiseparable.max_rank"]) for s in specs] == [
        (8, 4), (8, 8), (16, 4), (16, 8)]


@pytest.mark.parametrize("item, needle", [
    ("model.ffn.rank", "expected key=value1,value2"),
    ("model.ffn.rank=", "expected key=value1,value2"),
    ("=1,2", "expected key=value1,value2"),
    ("model.ffn.rnak=1,2", "unknown config key 'model.ffn.rnak'; did you mean model.ffn.rank"),
    ("model.ffn.rank=1,,2", "empty value"),
])
def test_grid_errors(item, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_grid([item])


def test_one_at_a_time_swaps_each_differing_component():
    specs = one_at_a_time(parse_spec("compact"), parse_spec("baseline"))
    labels = [s.label for s in specs]
    assert labels[:2] == ["compact", "baseline"]
    swapped = {lab.split("'s ")[-1]: s for lab, s in zip(labels[2:], specs[2:])}
    assert set(swapped) == {"embedding", "mixer", "ffn", "head", "memory features"}  # the norms agree
    mixer = swapped["mixer"].overrides
    assert mixer["model.mixer"]["kind"] == "attention" and mixer["model.positions"] == "learned"
    assert swapped["embedding"].overrides == {"model.embedding": swapped["embedding"].overrides["model.embedding"]}
    assert swapped["embedding"].overrides["model.embedding"]["kind"] == "dense"
    assert set(COMPONENTS["memory features"]) == set(swapped["memory features"].overrides)
    # every variant is a valid config
    runs = resolve(specs, Recipe({"train.max_tokens": 1000, "train.max_steps": 0}, seq_lens=(512,), lrs=(1e-3,)))
    assert [r.config.model.embedding.kind for r in runs[2:]] == ["dense", "tt", "tt", "tt", "tt"]
    # memory features set for every model are no component to swap (it would retrain compact)
    same = {"train.precision": "bf16", "train.optimizer": "adamw", "model.checkpointing": False}
    assert "memory features" not in " ".join(s.label for s in one_at_a_time(parse_spec("compact"),
                                                                              parse_spec("baseline"), same))


def test_one_at_a_time_from_a_hybrid_swaps_its_attention_layers_with_the_mixer():
    """`standard` has one attention layer among semiseparable ones: taking baseline's mixer takes
    baseline's (empty) attention_layers with it, or the variant would be an invalid config."""
    specs = one_at_a_time(parse_spec("standard"), parse_spec("baseline"))
    mixer = next(s for s in specs if s.label.endswith("'s mixer"))
    assert mixer.overrides["model.attention_layers"] == []
    runs = resolve(specs, Recipe({"train.max_tokens": 1000, "train.max_steps": 0}, seq_lens=(512,), lrs=(1e-3,)))
    assert {r.config.model.mixer_kind(5) for r in runs} == {"attention"}  # layer 5: attention in every variant
    assert {r.config.model.mixer_kind(0) for r in runs} == {"semiseparable", "attention"}


def test_resolve_refuses_recipe_overrides_and_disagreeing_configs():
    recipe = Recipe({"train.max_tokens": 1000, "train.max_steps": 0}, seq_lens=(64,), lrs=(1e-3,))
    with pytest.raises(ConfigError, match="overrides train.batch_size, which is part of the shared recipe"):
        resolve([parse_spec("tiny+train.batch_size=4")], recipe)
    with pytest.raises(ConfigError, match=r"differ in model.vocab_size \(4096 vs 10000\).*--set model.vocab_size"):
        resolve([parse_spec("tiny"), parse_spec("baseline")], recipe)
    with pytest.raises(ConfigError, match="given twice"):
        resolve([parse_spec("tiny"), parse_spec("tiny")], recipe)


def test_resolve_runs_every_length_and_lr_with_distinct_keys():
    recipe = Recipe({"train.max_tokens": 1000, "train.max_steps": 0}, seq_lens=(64, 128), lrs=(1e-3, 3e-3))
    runs = resolve([parse_spec("tiny")], recipe)
    assert [(r.seq_len, r.lr) for r in runs] == [(64, 1e-3), (64, 3e-3), (128, 1e-3), (128, 3e-3)]
    assert len({r.key for r in runs}) == 4
    assert [r.group for r in runs] == ["tiny@64", "tiny@64", "tiny@128", "tiny@128"]
    assert runs[1].label == "tiny@64 lr=0.003"
    # where a run is and how it logs is not part of its identity
    again = resolve([parse_spec("tiny")], Recipe({**recipe.values, "train.progress": False}, {}, (64,), (1e-3,)))
    assert again[0].key == runs[0].key


# ----------------------------------------------------------------------------- ranking rules
def test_pareto_verdict_uses_only_complete_rows_that_fit():
    rows = [
        _row("dense-small", "dense", 100, 80.0), _row("dense-big", "dense", 300, 50.0),
        _row("dense-cut-short", "dense", 120, 10.0, status="incomplete"),  # never the frontier
        _row("muse-a", "muse", 150, 70.0), _row("muse-b", "muse", 90, 60.0), _row("muse-c", "muse", 400, 55.0),
        _row("muse-failed", "muse", 50, 1.0, status="failed"),
    ]
    v = report.pareto(report.select(rows))
    by = {b["muse"]: b for b in v["budgets"]}
    assert set(by) == {"muse-a", "muse-b", "muse-c"}
    assert by["muse-a"]["dense"] == "dense-small" and by["muse-a"]["verdict"] == "MUSE dominates"
    assert by["muse-b"]["verdict"] == "no dense model fits"
    assert by["muse-c"]["dense"] == "dense-big" and by["muse-c"]["verdict"] == "dense wins"
    assert v["summary"].startswith("MUSE beats the best dense model that fits in the same memory at 1 of 3 budgets")


def test_pareto_win_beyond_the_dense_grid_is_not_counted():
    """A MUSE row ahead of every dense model, all of which fit in its memory, has no dense model of
    its size to beat: marked, not counted as a win."""
    rows = [_row("dense-small", "dense", 100, 80.0), _row("dense-big", "dense", 300, 50.0),
            _row("muse-huge", "muse", 5000, 40.0), _row("muse-mid", "muse", 200, 60.0)]
    v = report.pareto(report.select(rows))
    by = {b["muse"]: b for b in v["budgets"]}
    assert by["muse-huge"]["verdict"] == report.BEYOND and by["muse-huge"]["dense"] == "dense-big"
    assert by["muse-mid"]["verdict"] == "MUSE dominates"
    assert v["summary"].startswith("MUSE beats the best dense model that fits in the same memory at 1 of 2 budgets, "
                                   "loses at 0; at 1 MUSE is ahead of every dense model of the grid")


def test_pareto_is_open_while_dense_runs_are_not_trained():
    """With dense runs of the comparison not trained yet (``--only``), "no dense model fits" is not
    known, and a win may be overturned by one of them: open, and provisional."""
    rows = [_row("dense-small", "dense", 100, 80.0), _row("dense-big", "dense", 300, 50.0),
            _row("muse-a", "muse", 150, 70.0), _row("muse-b", "muse", 90, 60.0)]
    v = report.pareto(report.select(rows), untrained_dense=[None, None])
    by = {b["muse"]: b for b in v["budgets"]}
    assert by["muse-b"]["verdict"] == report.OPEN
    assert by["muse-a"]["verdict"] == "MUSE dominates" + report.PROVISIONAL
    assert v["summary"].startswith("MUSE beats the best dense model that fits in the same memory at 1 of 2 budgets")
    assert "open at 1" in v["summary"] and "provisional: 2 dense run(s)" in v["summary"]
    assert report.pareto(report.select(rows))["budgets"][0]["verdict"] == "no dense model fits"


def test_an_untrained_dense_run_counts_only_where_its_measured_peak_fits():
    """A dense run not trained yet whose ``--memory-only`` peak is known leaves the budgets below
    that peak decided; from it up, "no dense model fits" is open and a lead provisional."""
    rows = [_row("dense-small", "dense", 100, 80.0), _row("dense-big", "dense", 300, 50.0),
            _row("muse-a", "muse", 90, 60.0), _row("muse-b", "muse", 150, 70.0), _row("muse-c", "muse", 400, 40.0)]
    v = report.pareto(report.select(rows), untrained_dense=[200.0, 500.0])
    by = {b["muse"]: b["verdict"] for b in v["budgets"]}
    assert by == {"muse-a": "no dense model fits", "muse-b": "MUSE dominates",
                  "muse-c": report.BEYOND + report.PROVISIONAL}
    assert "provisional: 1 dense run(s)" in v["summary"]
    assert v["summary"].endswith("; 1 dense run(s) not trained yet peak above every MUSE model")
    got = [(x["from_mib"], x["to_mib"], x["verdict"]) for x in v["frontier"]]
    assert got == [(90, 100, "no dense model fits"), (100, 200, report.WIN), (200, 300, report.WIN + report.PROVISIONAL),
                   (300, 400, "dense wins"), (400, None, report.BEYOND + report.PROVISIONAL)]


def test_frontier_takes_the_best_model_of_each_family_at_every_memory_level():
    """At each level (every complete run's peak), the best MUSE model within it against the best
    dense model within it; equal neighbours merge into one range. A MUSE model worse than a smaller
    MUSE one never shows, and from the largest dense model's peak up a lead is not a win."""
    rows = [
        _row("dense-small", "dense", 100, 80.0), _row("dense-big", "dense", 300, 50.0),
        _row("muse-a", "muse", 150, 70.0), _row("muse-b", "muse", 200, 90.0),  # b: worse than a, larger
        _row("muse-c", "muse", 250, 45.0), _row("muse-huge", "muse", 900, 40.0),
        _row("muse-cut", "muse", 120, 1.0, status="incomplete"),
    ]
    f = report.frontier(report.select(rows))
    got = [(x["from_mib"], x["to_mib"], x["muse"], x["dense"], x["verdict"]) for x in f]
    assert got == [
        (100, 150, None, "dense-small", report.NO_MUSE),
        (150, 250, "muse-a", "dense-small", report.WIN),  # 200 (muse-b) changes nothing: merged
        (250, 300, "muse-c", "dense-small", report.WIN),
        (300, 900, "muse-c", "dense-big", report.BEYOND),  # no dense model above 300 was trained
        (900, None, "muse-huge", "dense-big", report.BEYOND),
    ]
    assert report.pareto(report.select(rows))["frontier"] == f
    assert report.frontier_text(f) == ("100–150 MiB: no MUSE model; 150–300 MiB: MUSE ahead; from 300 MiB: beyond the "
                                       "largest dense model: MUSE ahead, not a win")
    narrow = [{"verdict": report.WIN, "from_mib": 100, "to_mib": 627.26},
              {"verdict": report.WIN + report.PROVISIONAL, "from_mib": 627.26, "to_mib": 627.3},
              {"verdict": report.BEYOND, "from_mib": 627.3, "to_mib": None}]
    assert report.frontier_text(narrow) == ("100–627 MiB: MUSE ahead; from 627 MiB: beyond the largest dense model: "
                                            "MUSE ahead, not a win")  # no "627–627"
    loss = report.frontier(report.select([_row("d", "dense", 100, 50.0), _row("m", "muse", 150, 60.0)]),
                           untrained_dense=[None])
    assert [x["verdict"] for x in loss] == [report.NO_MUSE, "dense wins"]
    assert report.frontier(report.select([_row("m", "muse", 150, 60.0)]), untrained_dense=[None])[0]["verdict"] == report.OPEN


def test_lr_sweep_selects_by_validation_not_test():
    rows = [
        _row("m lr=0.001", "muse", 1, 50.0, val=3.0, group="m", lr=1e-3),
        _row("m lr=0.003", "muse", 1, 40.0, val=3.5, group="m", lr=3e-3),  # better test, worse validation
        _row("m lr=0.01", "muse", 1, 30.0, val=1.0, group="m", lr=1e-2, status="incomplete"),
    ]
    assert [r["label"] for r in report.select(rows)] == ["m lr=0.001"]


def test_markdown_keeps_incomplete_rows_out_of_the_ranking():
    rows = [_row("ok", "dense", 10, 50.0), _row("short", "muse", 5, 20.0, status="incomplete")]
    meta = {"recipe": {"tokenizer": "bpe", "batch_size": 2, "seq_lens": [8], "max_tokens": 100, "seed": 0,
                       "lrs": [1e-3, 3e-3], "warmup_steps": 1, "min_lr_ratio": 0.1}, "dataset": "x", "torch": "t"}
    md = report.markdown(meta, rows, report.select(rows), report.pareto(report.select(rows)))
    ranked, apart = md.split("## Not ranked")
    assert "| ok |" in ranked and "| short |" not in ranked
    assert "| short | incomplete |" in apart
    csv_lines = report.csv_text(rows, report.select(rows)).splitlines()
    assert csv_lines[0].startswith("label,group,family,status") and len(csv_lines) == 3


# ----------------------------------------------------------------------------- whole runs (CPU)
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def test_compare_two_models_writes_everything_and_resumes(corpus, tmp_path, capsys, monkeypatch):
    out, cache = tmp_path / "cmp", tmp_path / "cache"
    argv = ["compare", TINY, TINY + "+model.mixer.kind=attention+model.positions=learned", *common_args(corpus, cache, out)]
    assert main(argv) == 0
    from muse.compare.plots import available

    pngs = ("val_loss.png", "ppl_vs_memory.png", "ppl_vs_params.png") if available() else ()  # the plot extra
    for name in ("results.json", "results.csv", "results.md", *pngs):
        assert (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())
    assert len(res["rows"]) == 2 and res["recipe"]["max_tokens"] == 4096
    for r in res["rows"]:
        assert r["status"] == "complete" and r["tokens_seen"] >= 4096
        assert r["actual_params"] > 0 and r["dense_equivalent_params"] > r["actual_params"]
        assert r["peak_memory_method"] == "estimate" and r["peak_memory_mib"] > 0  # no CUDA here: labelled
        assert r["tokens_per_s_median"] > 0 and r["device"].startswith("cpu") and r["git_sha"] and r["date"]
        t = r["test"]
        assert t["split"] == "test" and math.isfinite(t["perplexity"]) and t["word_perplexity"] > t["perplexity"] > 1
        assert t["bits_per_byte"] > 0 and t["step"] * 256 in [x for x, _ in r["val_curve"]]  # a checkpoint's step
        assert r["val_curve"] and r["best_val_loss"] == min(v for _, v in r["val_curve"])
    md = (out / "results.md").read_text()
    assert "estimate" in md and "Command that wrote these reports: `muse compare" in md and "trained by: `muse compare" in md

    # a second invocation with the same folder trains nothing
    import muse.compare.run as run_mod

    def boom(*a, **k):
        raise AssertionError("retrained a finished run")

    monkeypatch.setattr(run_mod, "train_and_score", boom)
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("kept from an earlier invocation") == 2
    assert "at every memory level, the best MUSE model against the best dense model within it: " in printed

    # --only: a third model not matched is neither trained nor reported; the done ones still are
    assert main(argv[:3] + [TINY + "+model.ffn.rank=4"] + argv[3:] + ["--only", "nothing*"]) == 0
    printed = capsys.readouterr().out
    assert "not run now (--only)" in printed and printed.count("kept from an earlier invocation") == 2
    assert len(json.loads((out / "results.json").read_text())["rows"]) == 2

    # the same run written otherwise (here: a default spelled out) is kept, under this command's name
    respelled = TINY + "+model.factor_init=gaussian"
    assert main(["compare", respelled, *argv[3:]]) == 0
    assert capsys.readouterr().out.count("kept from an earlier invocation") == 1
    [row] = json.loads((out / "results.json").read_text())["rows"]
    assert row["label"].endswith("+factor_init=gaussian") and row["status"] == "complete"


def test_memory_only_measures_each_model_once_and_trains_nothing(corpus, tmp_path, capsys, monkeypatch):
    import muse.compare.run as run_mod

    def boom(*a, **k):
        raise AssertionError("--memory-only trained a run")

    monkeypatch.setattr(run_mod, "train_and_score", boom)
    out, cache = tmp_path / "mem", tmp_path / "cache"
    big = TINY.replace("d_model=32", "d_model=64")
    argv = ["compare", big, TINY, *common_args(corpus, cache, out), "--lr", "1e-3", "3e-3", "--memory-only"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "memory.json").read_text())
    rows = {r["model"]: r for r in res["rows"]}
    assert list(rows) == [big.replace("model.", ""), TINY.replace("model.", "")]  # one row per model, not per lr
    for r in rows.values():
        assert r["peak_memory_method"] == "estimate" and r["peak_memory_mib"] > 0  # no CUDA here: labelled
        assert r["batch_size"] == 8 and r["seq_len"] == 32 and r["device"].startswith("cpu") and r["git_sha"]
        assert r["peak_memory_cublas_workspace"]  # part of the peak: recorded with it
    assert rows[big.replace("model.", "")]["config"]["model"]["d_model"] == 64  # what ran, beside its label
    assert rows[big.replace("model.", "")]["peak_memory_mib"] > rows[TINY.replace("model.", "")]["peak_memory_mib"]
    table = [line.split()[0] for line in printed.splitlines() if line.startswith("tiny")]
    assert table == [TINY.replace("model.", ""), big.replace("model.", "")]  # smallest peak first
    assert not (out / "rows").exists() and not (out / "results.json").exists()


def test_an_untrained_dense_run_is_reported_with_its_measured_peak(corpus, tmp_path, capsys):
    """``--only`` leaves a dense model untrained: the reports carry its ``--memory-only`` peak, so
    the budgets it cannot fit in are decided."""
    out, cache = tmp_path / "cmp", tmp_path / "cache"
    dense = "baseline+model.d_model=32+model.n_layers=1+model.n_heads=2"
    argv = ["compare", dense, TINY, *common_args(corpus, cache, out), "--lr", "1e-3"]
    assert main(argv + ["--memory-only"]) == 0
    peaks = {r["model"]: r["peak_memory_mib"] for r in json.loads((out / "memory.json").read_text())["rows"]}
    assert main(argv + ["--only", "tiny*"]) == 0
    res = json.loads((out / "results.json").read_text())
    label = dense.replace("model.", "")
    assert res["not_run_dense"] == [{"label": label, "group": label, "peak_memory_mib": peaks[label]}]
    (out / "memory.json").unlink()  # not measured: it may fit anywhere
    assert main(argv + ["--only", "tiny*"]) == 0
    assert json.loads((out / "results.json").read_text())["not_run_dense"][0]["peak_memory_mib"] is None
    capsys.readouterr()


def test_ablate_2x2_and_a_time_cap_row(corpus, tmp_path, capsys):
    out, cache = tmp_path / "abl", tmp_path / "cache"
    argv = ["ablate", TINY, "--grid", "model.ffn.rank=4,8", "--grid", "model.mixer.semiseparable.max_rank=4,8",
            *common_args(corpus, cache, out)]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["label"].split("+", 4)[-1] for r in res["rows"]] == [
        "ffn.rank=4+mixer.semiseparable.max_rank=4", "ffn.rank=4+mixer.semiseparable.max_rank=8",
        "ffn.rank=8+mixer.semiseparable.max_rank=4", "ffn.rank=8+mixer.semiseparable.max_rank=8"]
    assert all(r["status"] == "complete" for r in res["rows"])

    # a time cap that stops the run before its token budget: marked, kept out of the ranking, exit 1
    capped = tmp_path / "capped"
    argv = ["compare", TINY, *common_args(corpus, cache, capped)]
    argv[argv.index("--max-tokens") + 1] = "10000000"
    assert main(argv + ["--max-minutes", "0.0001"]) == 1
    row = json.loads((capped / "results.json").read_text())["rows"][0]
    assert row["status"] == "incomplete" and "train.max_minutes" in row["status_detail"]
    ranked = (capped / "results.md").read_text().split("## Not ranked")[0]
    assert TINY.split("+")[0] + "+d_model" not in ranked.split("|---|")[-1]


@pytest.mark.parametrize("argv, needle", [
    (["ablate", "tiny", "--grid", "model.ffn.rank"], "muse: error: --grid 'model.ffn.rank': expected key=value1,value2"),
    (["ablate", "tiny", "--grid", "model.fnn.rank=1,2"], "unknown config key 'model.fnn.rank'"),
    (["ablate", "tiny"], "needs either --grid"),
    (["compare", "tiny+model.d_model=32", "--set", "train.lr"], "--set 'train.lr': expected KEY=VALUE"),
    (["compare", "nosuchpreset"], "unknown preset 'nosuchpreset'"),
])
def test_bad_input_is_one_line(argv, needle, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_plots_are_optional(corpus, tmp_path, capsys, monkeypatch):
    import muse.compare.plots as plots

    monkeypatch.setattr(plots, "available", lambda: False)
    out = tmp_path / "np"
    argv = ["compare", TINY, *common_args(corpus, tmp_path / "cache", out)]
    argv[argv.index("--max-tokens") + 1] = "512"
    assert main(argv) == 0
    assert "matplotlib is not installed; plots skipped" in capsys.readouterr().err
    assert (out / "results.md").exists() and not list(out.glob("*.png"))


def test_shipped_experiments_resolve(monkeypatch):
    """Every committed experiment file (``<command>-NAME.args``) parses, and every model in it is a
    valid config under its recipe; nothing is trained. ``NAME-cpu`` files train on the CPU."""
    import shlex

    from muse.cli import build_parser
    from muse.compare import cli as ccli

    files = sorted((ROOT / "configs" / "experiments").glob("*.args"))
    assert files
    seen = []
    monkeypatch.setattr(ccli, "run_specs", lambda args, specs, title: seen.append((args, specs)) or 0)
    for f in files:
        command = f.name.split("-", 1)[0]
        assert command in ("compare", "ablate"), f
        parser, _ = build_parser()
        args = parser.parse_args([command, *shlex.split(f.read_text(), comments=True)])
        assert args.func(args) == 0
        a, specs = seen[-1]
        runs = resolve(specs, ccli.recipe_from_args(a, specs[0]))
        assert len(runs) >= 2, f
        # the GPU experiments share the budget; a -cpu one is a small-scale proxy run on CPUs
        if f.stem.endswith("-cpu"):
            assert all(r.config.train.device == "cpu" for r in runs), f
        else:
            assert all(r.config.train.max_tokens == 20_000_000 for r in runs), f


def test_a_model_that_cannot_be_built_fails_before_training(tmp_path, capsys, monkeypatch):
    """A missing optional extra (here transformers for hf-gpt2) stops the comparison up front."""
    import builtins

    real = builtins.__import__

    def no_transformers(name, *a, **k):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    import muse.compare.run as run_mod

    monkeypatch.setattr(run_mod, "train_and_score", lambda *a, **k: (_ for _ in ()).throw(AssertionError("trained")))
    assert main(["compare", "baseline", "hf-gpt2", "--max-tokens", "1000", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("muse: error: model 'hf-gpt2':") and "muse[hf]" in err and len(err.splitlines()) == 1


def test_rows_survive_new_config_fields_but_not_changed_values():
    """A row saved before a config field existed is the same run when the field is at its default
    now; a saved value that differs (a changed default, another rank) is another run."""
    from muse.compare.spec import same_run
    from muse.config import load_config, to_dict

    cfg = load_config("compact", {"train.max_tokens": 1000})
    saved = to_dict(cfg)
    assert same_run(saved, cfg)
    del saved["model"]["attention_layers"], saved["model"]["mixer"]["holographic"]  # fields added later
    saved["train"]["device"], saved["data"]["cache_dir"] = "cuda:0", "/elsewhere"  # volatile keys
    assert same_run(saved, cfg)
    saved["model"]["ffn"]["rank"] = 64
    assert not same_run(saved, cfg)
    saved = to_dict(cfg)
    saved["train"]["warmup_steps"] = 7  # explicit in the row, another value now
    assert not same_run(saved, cfg)



def test_a_best_rate_at_the_edge_of_the_sweep_is_named():
    rows = [
        _row("a lr=0.001", "muse", 1, 50.0, val=3.0, group="a", lr=1e-3),
        _row("a lr=0.002", "muse", 1, 45.0, val=2.9, group="a", lr=2e-3),  # the largest: named
        _row("b lr=0.0005", "dense", 1, 50.0, val=2.0, group="b", lr=5e-4),  # the smallest: named
        _row("b lr=0.001", "dense", 1, 55.0, val=2.5, group="b", lr=1e-3),
        _row("c lr=0.001", "dense", 1, 55.0, val=2.0, group="c", lr=1e-3),  # inside: not named
        _row("c lr=0.002", "dense", 1, 55.0, val=2.5, group="c", lr=2e-3),
    ]
    lrs = [5e-4, 1e-3, 2e-3]
    edge = report.lr_at_edge(report.select(rows), lrs)
    assert edge == {"largest": ["a"], "smallest": ["b"]}
    assert report.lr_at_edge(report.select(rows), lrs[1:]) == {"largest": [], "smallest": []}  # two rates: all edges
    text = report.lr_edge_text(edge, 3)
    assert "1 of 3 models at the largest rate tried (`a`)" in text and "1 of 3 models at the smallest" in text
    meta = {"recipe": {"tokenizer": "bpe", "batch_size": 2, "seq_lens": [8], "max_tokens": 100, "seed": 0,
                       "lrs": lrs, "warmup_steps": 1, "min_lr_ratio": 0.1}, "dataset": "x", "torch": "t"}
    assert text in report.markdown(meta, rows, report.select(rows), report.pareto(report.select(rows)))
