"""The README and docs/ tables are generated from benchmarks/results/*.json and must be current;
the README is a user's guide whose commands match CI's and what `muse train` prints."""

import importlib.util
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _tables():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _copy_targets(mod, tmp_path: Path) -> None:
    for name in mod.TARGETS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)


def test_readme_tables_match_results():
    mod = _tables()
    assert mod.main(["--check"]) == 0, "run: python benchmarks/readme_tables.py"


def test_tables_are_rendered_from_json_not_typed():
    mod = _tables()
    blank = "".join(f"<!-- {name}:start -->\n{'stale' if name == 'presets-table' else ''}\n<!-- {name}:end -->\n"
                    for name in mod.TABLES)
    out = mod.render(blank)
    assert "stale" not in out and "`xxl-100b`" in out and "`baseline`" in out and "`triton` ms" in out


def test_check_covers_the_docs_and_every_table(tmp_path, monkeypatch):
    """A stale table in docs/ fails the check like one in the README; the generator rewrites it; a
    table whose markers no target holds is an error, not silently dropped."""
    mod = _tables()
    _copy_targets(mod, tmp_path)
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    notes = tmp_path / "docs" / "performance-notes.md"
    text = notes.read_text()
    stale = re.sub(r"(<!-- mixers-table:start -->\n).*?(<!-- mixers-table:end -->)", r"\1| stale |\n\2", text,
                   flags=re.S)
    assert stale != text
    notes.write_text(stale)
    assert mod.main(["--check"]) == 1
    assert mod.main([]) == 0 and mod.main(["--check"]) == 0
    assert notes.read_text() == text
    notes.write_text(text.replace("<!-- mixers-table:start -->", ""))
    assert mod.main(["--check"]) == 1


def test_presets_table_takes_each_preset_s_own_measurements():
    """The full-step peak is the verify row that ran the preset with its own recipe (baseline:
    fp32 AdamW, not its bf16 rows), and the 8 GiB rows count only for the preset's own model (the
    dense model of phase8-max's shape is another model)."""
    mod = _tables()
    src = mod.verify_sources()  # {section: (results file, run)}: each section from its newest run
    rows = {r["label"]: r for r in src["full_model"][1]["full_model"]}
    budget = {(r["preset"], r["variant"]): r for r in src["budget_8gib"][1]["budget_8gib"]}
    table = mod.presets_table()
    line = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w-]+)` \|.*$", table, re.M)}
    fp32, bf16 = rows["baseline fp32"]["train"]["peak"], rows["baseline bf16 autocast"]["train"]["peak"]
    assert mod.fmt_bytes(fp32) in line["baseline"] and mod.fmt_bytes(bf16) not in line["baseline"]
    dense = budget[("phase8-max", "dense")]["peak"]
    assert dense != budget[("phase8-max", "phase8-max")]["peak"]
    assert mod.fmt_bytes(dense) not in line["phase8-max"]
    assert mod.fmt_bytes(budget[("phase8-max", "phase8-max")]["peak"]) in line["phase8-max"]


def test_presets_table_puts_the_dense_model_of_equal_memory_beside_each_muse_preset():
    """Each MUSE preset of the Pareto comparison shows the best dense model within its B=32 peak
    and the verdict, from the comparison's own equal-memory budgets; dense presets show none."""
    mod = _tables()
    res = json.loads((ROOT / "benchmarks/results/compare-wikitext2-pareto/results.json").read_text())
    line = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w-]+)` \|.*$", mod.presets_table(), re.M)}
    presets = [b for b in res["pareto"]["budgets"] if "+" not in b["muse_model"]]  # derived models: no row here
    assert {"standard", "compact"} <= {b["muse_model"] for b in presets}
    for b in presets:
        cell = line[b["muse_model"]].rstrip(" |").rsplit("| ", 1)[1]
        assert f"{b['dense_perplexity']:.2f}" in cell and f"({b['verdict']})" in cell
    assert line["baseline"].endswith("| – |")


def test_headline_verdicts_are_the_comparisons_own():
    """The README's verdict table has one row per MUSE model of each WikiText-2 comparison, with
    the best dense model within its peak and the verdict its results.json records; a derived
    dense model is named by its overrides alone."""
    _tables()  # puts benchmarks/ on sys.path
    import compare_tables as ct
    assert ct.short("baseline+d_model=384+n_heads=6+n_layers=4+head.kind=tied") == "`d_model=384, h=6, L=4, tied head`"
    assert ct.short("standard") == "`standard`" and ct.short("baseline") == "`baseline`"
    assert ct.verdict_words("MUSE dominates (provisional)") == "**MUSE wins** (provisional)"
    assert ct.verdict_words("beyond the dense grid").endswith("not a win")
    table = ct.verdict_table().splitlines()
    n = 0
    for name, _ in ct.VERDICT_SOURCES:
        res = ct.load(name)
        for b in (res or {}).get("pareto", {}).get("budgets", []):
            row = table[2 + n]
            assert ct.short(b["muse_model"]) in row and f"{b['muse_perplexity']:.2f}" in row
            assert ct.verdict_words(b["verdict"]) in row
            if b["dense"]:
                assert ct.short(b["dense_model"]) in row and f"{b['dense_perplexity']:.2f}" in row
            n += 1
    assert n > 0 and len(table) == 2 + n
    res = ct.load(ct.PARETO)
    levels = ct.frontier_sentence(ct.PARETO)
    verdicts = [None] + [f["verdict"] for f in res["pareto"]["frontier"]]
    for i, f in enumerate(res["pareto"]["frontier"]):  # a span starts wherever the verdict changes
        assert (f"{f['from_mib']:,.0f}" in levels) == (f["verdict"] != verdicts[i])


def test_readme_is_a_guide_not_a_log():
    """Outside its generated tables the README names no commits and no issue numbers: the
    development record lives in docs/performance-notes.md."""
    prose = re.sub(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", "", README, flags=re.S)
    assert not re.findall(r"`[0-9a-f]{7}(?:\+\w+)?`", prose)
    assert not re.findall(r"\bissue \d+", prose, re.I)
    assert "docs/design.md" in prose and "docs/performance-notes.md" in prose


def test_readme_test_command_is_ci_s():
    """CI (.ci/run) ends with the README's test command, after installing the extras it names."""
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci[-1] == "python -m pytest"
    block = re.search(r"## Tests\n+```bash\n(.*?)```", README, re.S).group(1).splitlines()
    assert block[-1] == ci[-1]
    installs = [b for b in block if b.startswith("pip install")]
    for cmd in installs:
        assert any(line.replace(" --quiet", "").endswith(cmd) for line in ci), cmd


def _normalise(command: str) -> str:
    """A printed or README command with the run directory and budget numbers as placeholders."""
    command = re.sub(r"runs/tiny-\d{8}-\d{6}", "RUN", command.strip())
    return re.sub(r"(--train\.max_\w+) \d+", r"\1 N", command)


def test_commands_printed_after_training_are_the_readmes(tmp_path, monkeypatch, capsys):
    """`muse train` ends with the commands to run next; the README's quickstart shows the same
    ones (the run directory and budget differ, so they are compared as placeholders)."""
    from muse.cli import main
    from muse.data import datasets

    stdlib = tmp_path / "stdlib"  # a small stand-in for the machine's stdlib: same code path, seconds
    for i in range(12):
        (stdlib / f"mod{i}.py").parent.mkdir(exist_ok=True)
        (stdlib / f"mod{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x + {j}\n\n" for j in range(80)))
    monkeypatch.setattr(datasets, "sysconfig", SimpleNamespace(get_paths=lambda: {"stdlib": str(stdlib)}))
    monkeypatch.chdir(tmp_path)  # the default run directory, runs/tiny-DATE-TIME, as a user gets it
    args = ["train", "--data.tokenizer", "bytes", "--data.cache_dir", str(tmp_path / "cache"),
            "--train.max_steps", "2", "--train.eval_every", "2", "--train.eval_tokens", "512",
            "--train.batch_size", "2", "--train.progress", "false", "--train.tensorboard", "false"]
    assert main(args) == 0
    printed = [m.group(1) for m in re.finditer(r"^ +\w+: +(muse .+)$", capsys.readouterr().out, re.M)]
    assert [c.split()[:2] for c in printed] == [["muse", "eval"], ["muse", "generate"], ["muse", "train"]]
    assert all(re.search(r"runs/tiny-\d{8}-\d{6}", c) for c in printed), printed
    readme = {_normalise(line) for line in (ROOT / "README.md").read_text().splitlines()}
    missing = [c for c in printed if _normalise(c) not in readme]
    assert not missing, f"README.md's quickstart must show these commands as `muse train` prints them: {missing}"


def test_figures_are_named_by_the_preset_they_measured_today():
    """A results row names the preset it ran; after a preset is rebuilt (standard's old config is
    `compact` now) its figures must not be printed under the name's new meaning."""
    _tables()  # puts benchmarks/ on sys.path
    import provenance as pv

    from muse.config import load_config, to_dict

    old = to_dict(load_config("compact", {"model.max_seq_len": 2048, "model.mixer.semiseparable.impl": "triton"}))
    assert pv.label("standard", model=old["model"]) == "`compact` (run as `standard`)"  # length, kernels: not the model
    assert pv.label("standard", model=to_dict(load_config("standard"))["model"]) == "`standard`"
    gone = to_dict(load_config("compact", {"model.ffn.rank": 48}))["model"]
    assert pv.label("standard", model=gone) == "`standard` (an earlier config)"
    # muse verify's rows record sizes only: the parameter count decides
    counts = {n: r["actual_params"] for n, r in ((r["name"], r) for r in json.loads(
        (ROOT / "benchmarks/results/params.json").read_text())["figures"])}
    assert pv.current_name("standard", params=counts["compact"]) == "compact"
    assert pv.is_current("standard", params=counts["standard"]) and not pv.is_current("standard", params=1)
    # decode_memory's older rows record the mixer layout only
    assert pv.is_current("standard", mixer="semiseparable + attention at [5]")
    assert pv.current_name("standard", mixer="semiseparable") is None


def test_rendered_tables_do_not_print_an_old_config_under_a_new_name():
    mod = _tables()
    old = json.loads((ROOT / "benchmarks/results/train_throughput-gpu.json").read_text())
    if old["figures"][0]["standard"]["config"]["embedding"]["kind"] == "tt":  # measured before the rebuild
        assert "`compact` (run as `standard`) tokens/s" in mod.throughput_markdown(old)
    table = mod.presets_table()
    std = next(line for line in table.splitlines() if line.startswith("| `standard` |"))
    verify = json.loads((ROOT / "benchmarks/results/verify-cublas-16-8.json").read_text())
    stale = [r for r in verify["full_model"] if r["preset"] == "standard" and "actual_params" not in r]
    for r in stale:  # the old standard's measured peak is compact's, not standard's
        assert f"{r['train']['peak'] / 2**20:,.1f} MiB¹" not in std
