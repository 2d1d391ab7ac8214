"""CPU smoke tests of the issue-5 GPU benchmarks: tiny shapes, the torch `chunked` scan, a tmp dir."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ENV_KEYS = {"git_sha", "date", "device", "device_type", "torch"}


@pytest.fixture(scope="module")
def mixers_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixers")
    rc = _script("mixers").main(["--seqs", "32", "48", "--tokens", "64", "--d-model", "64", "--heads", "4",
                                 "--impl", "chunked", "--chunk-size", "16", "--hcm-dim", "33", "--slots", "5",
                                 "--out", str(out)])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def throughput_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("throughput")
    rc = _script("train_throughput").main([
        "--seqs", "32", "64", "--tokens", "64", "--impl", "chunked", "--precision", "fp32", "--warmup-steps", "1",
        "--steps", "2", "--set", "model.d_model=64", "--set", "model.n_layers=2", "--set", "model.n_heads=4",
        "--set", "model.vocab_size=256", "--out", str(out)])
    assert rc == 0
    return out


def test_mixers_json(mixers_result):
    res = json.loads((mixers_result / "mixers-cpu.json").read_text())
    assert res["benchmark"] == "mixers" and ENV_KEYS <= res.keys() and res["device_type"] == "cpu"
    assert res["config"]["impl"] == "chunked" and res["config"]["rank"] == 32  # max_rank of `standard`
    assert [r["N"] for r in res["figures"]] == [32, 48] and [r["B"] for r in res["figures"]] == [2, 1]
    for r in res["figures"]:
        for name in ("sdpa", "scan", "attention_layer", "semiseparable_layer"):
            assert "error" not in r[name] and r[name]["ms"] > 0 and "peak_mib" in r[name]
        assert {"sdpa_over_scan", "attention_over_semiseparable_layer"} <= set(r["speedup"])
        assert all(v > 0 for v in r["speedup"].values() if v is not None)
        c = r["check"]
        assert c["ok"] and c["full_shape"] and set(c["errors"]) == {"y", "du", "dv", "dz", "dlog_decay"}
        assert all(0 <= e < 2e-2 for e in c["errors"].values())
        assert "error" not in r["holographic_layer"] and r["holographic_layer"]["ms"] > 0
        assert r["speedup"]["attention_over_holographic_layer"] > 0
        h = r["holographic_check"]
        assert h["ok"] and set(h["errors"]) == {"r", "dq", "dk", "dv", "dalpha", "dbeta", "dlog_gamma"}
    assert res["config"]["holographic_mixer"]["holographic"]["hcm_dim"] == 33 and res["config"]["holo_path"] == "chunked"
    md = (mixers_result / "mixers-cpu.md").read_text()
    assert "| 48 | 1 |" in md and "PASS" in md and "holographic layer ms" in md and "hcm_dim 33, 5 slots" in md


def test_mixers_holographic_check_fails_on_a_wrong_read(monkeypatch, tmp_path):
    mod = _script("mixers")
    real = mod.holographic

    def wrong(*a, impl="chunked", **kw):
        r, s = real(*a, impl="chunked", **kw)
        return (r * 1.1 if impl == "recurrent" else r), s

    monkeypatch.setattr(mod, "holographic", wrong)
    rc = mod.main(["--seqs", "32", "--tokens", "32", "--d-model", "32", "--heads", "2", "--impl", "chunked",
                   "--holo-impl", "recurrent", "--hcm-dim", "16", "--slots", "3", "--chunk-size", "16",
                   "--out", str(tmp_path)])
    res = json.loads((tmp_path / "mixers-cpu.json").read_text())
    row = res["figures"][0]
    assert rc == 1 and row["check"]["ok"] and not row["holographic_check"]["ok"]
    assert "FAIL" in (tmp_path / "mixers-cpu.md").read_text()


def test_mixers_check_fails_on_a_wrong_scan(monkeypatch, tmp_path):
    mod = _script("mixers")
    real = mod.semiseparable

    def wrong(u, v, z, log_decay=None, *a, impl="chunked", **kw):
        y, s = real(u, v, z, log_decay, *a, impl="chunked", **kw)
        return (y * 1.1 if impl == "recurrent" else y), s

    monkeypatch.setattr(mod, "semiseparable", wrong)
    rc = mod.main(["--seqs", "32", "--tokens", "32", "--d-model", "32", "--heads", "2", "--impl", "recurrent",
                   "--chunk-size", "16", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "mixers-cpu.json").read_text())
    assert rc == 1 and not res["figures"][0]["check"]["ok"] and "FAIL" in (tmp_path / "mixers-cpu.md").read_text()


def test_throughput_json(throughput_result):
    res = json.loads((throughput_result / "train_throughput-cpu.json").read_text())
    assert res["benchmark"] == "train_throughput" and ENV_KEYS <= res.keys()
    assert res["config"]["presets"] == ["baseline", "standard"] and res["config"]["steps"] == 2
    assert res["config"]["compile"] is None
    for r, (n, b) in zip(res["figures"], [(32, 2), (64, 1)]):
        assert (r["N"], r["B"]) == (n, b)
        assert r["baseline"]["mixer"] == "attention" and r["standard"]["mixer"] == "semiseparable + attention at [1]"
        for p in ("baseline", "standard"):
            assert "error" not in r[p] and r[p]["tokens_per_s"] > 0 and r[p]["step_ms"] > 0
            assert r[p]["config"]["max_seq_len"] == n and r[p]["config"]["d_model"] == 64
        assert r["ratio_tokens_per_s"] > 0 and "ratio_peak_memory" in r
        # which implementation each op ran, "auto" resolved (CPU: the torch paths)
        assert r["baseline"]["paths"] == {"linear_cross_entropy": ["chunked"]}
        assert r["standard"]["paths"] == {  # a dense embedding: no TT gather
            "gate_inputs": ["naive"], "linear_cross_entropy": ["chunked"], "lowrank_mlp": ["torch"],
            "rms_norm": ["naive"], "semiseparable": ["chunked"]}
    md = (throughput_result / "train_throughput-cpu.md").read_text()
    assert md.startswith("| N | B |")
    assert "Kernels run: `baseline` linear_cross_entropy chunked; `standard` gate_inputs naive, " in md


def test_throughput_repeats(tmp_path):
    rc = _script("train_throughput").main([
        "--seqs", "32", "--tokens", "32", "--impl", "chunked", "--precision", "fp32", "--warmup-steps", "1",
        "--steps", "1", "--repeats", "3", "--set", "model.d_model=32", "--set", "model.n_layers=1",
        "--set", "model.n_heads=2", "--set", "model.vocab_size=128", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "train_throughput-x3-cpu.json").read_text())
    r = res["figures"][0]
    assert res["config"]["repeats"] == 3
    for p in ("baseline", "standard"):
        runs = r[p]["repeats_tokens_per_s"]
        assert len(runs) == 3 and all(t > 0 for t in runs)
        assert r[p]["tokens_per_s"] == sorted(runs)[1]  # the median run
    lo, hi = r["ratio_range"]
    assert 0 < lo <= hi
    pairs = [q / p for p, q in zip(r["baseline"]["repeats_tokens_per_s"], r["standard"]["repeats_tokens_per_s"])]
    assert (lo, hi) == (min(pairs), max(pairs))
    md = (tmp_path / "train_throughput-x3-cpu.md").read_text()
    assert f"({lo:.2f}–{hi:.2f})" in md and "among 3 independent runs" in md


def test_median_run_skips_failures():
    median_run = _script("train_throughput")._median_run
    runs = [{"tokens_per_s": 3.0}, {"tokens_per_s": None, "error": "OOM"}, {"tokens_per_s": 1.0},
            {"tokens_per_s": 2.0}]
    out = median_run(runs)
    assert out["tokens_per_s"] == 2.0 and out["repeats_tokens_per_s"] == [3.0, None, 1.0, 2.0]
    assert median_run([{"tokens_per_s": None, "error": "x"}])["error"] == "x"


def test_throughput_compile_needs_cuda(tmp_path, capsys):
    rc = _script("train_throughput").main(["--compile", "reduce-overhead", "--out", str(tmp_path)])
    assert rc == 2 and "needs a CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_tt_embedding_json(tmp_path):
    """nn.Embedding vs TT torch vs TT fused (Triton's interpreter on CPU), k = 2 and 3 cores."""
    pytest.importorskip("triton")
    rc = _script("tt_embedding").main(["--shapes", "60x24", "5000x64", "--ranks", "3", "--tokens", "24",
                                       "--dtypes", "fp32", "--copy-mib", "4", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "tt_embedding-cpu.json").read_text())
    assert res["benchmark"] == "tt_embedding" and ENV_KEYS <= res.keys() and res["copy_bandwidth_gbs"] > 0
    assert [(r["vocab"], r["dim"], len(r["dim_factors"])) for r in res["figures"]] == [(60, 24, 2), (5000, 64, 3)]
    for r in res["figures"]:
        for name in ("embedding", "tt_torch", "tt_triton"):
            assert "error" not in r[name] and r[name]["ms"] > 0 and r[name]["x_floor"] > 0
        assert r["floor_bytes"] == 2 * 24 * r["dim"] * 4 + 2 * 24 * 8 + 3 * r["tt_params"] * 4
        cores = {f"core{i}" for i in range(len(r["dim_factors"]))}
        assert r["check"]["ok"] and set(r["check"]["errors"]) == {"out", *cores}
    assert "| 5000 | 64 | 3 | fp32 |" in (tmp_path / "tt_embedding-cpu.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal applies off CUDA")
def test_no_default_output_off_cuda(capsys):
    assert _script("mixers").main(["--seqs", "32"]) == 2
    assert _script("train_throughput").main(["--seqs", "32"]) == 2
    assert _script("tt_embedding").main(["--shapes", "60x24"]) == 2
    assert _script("decode").main(["--presets", "tiny"]) == 2
    assert "not on CUDA" in capsys.readouterr().err


def test_cuda_graph_needs_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("the refusal applies off CUDA")
    assert _script("train_throughput").main(["--cuda-graph", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "--cuda-graph measures GPU steps" in capsys.readouterr().err


def test_readme_tables_from_results(mixers_result, throughput_result, tmp_path, monkeypatch):
    tables = _script("readme_tables")
    import results_files  # benchmarks/ is on sys.path now: the module every table reads results through

    monkeypatch.setattr(results_files, "RESULTS", tmp_path)
    assert tables.mixers_table() == tables.TABLES["throughput-table"]() == "_No GPU run recorded yet._"
    # the tables read the -gpu names; feed them this run's files
    (tmp_path / "mixers-gpu.json").write_text((mixers_result / "mixers-cpu.json").read_text())
    (tmp_path / "train_throughput-gpu.json").write_text((throughput_result / "train_throughput-cpu.json").read_text())
    monkeypatch.setattr(tables, "TABLES", {k: tables.TABLES[k] for k in ("mixers-table", "throughput-table")})
    text = "<!-- mixers-table:start -->\nstale\n<!-- mixers-table:end -->\n" \
           "<!-- throughput-table:start -->\n<!-- throughput-table:end -->\n"
    out = tables.render(text)
    assert "stale" not in out and "`benchmarks/mixers.py`" in out and "`benchmarks/train_throughput.py`" in out
    assert "| 32 | 2 |" in out


def test_lowrank_ffn_benchmark_on_cpu(tmp_path):
    """CPU run: the torch row only (the compiled and Triton rows are GPU figures), JSON + table."""
    rc = _script("lowrank_ffn").main(["--shapes", "40,16,4", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "lowrank_ffn-cpu.json").read_text())
    assert ENV_KEYS <= res.keys() and res["config"]["impls"] == ["torch"]
    (row,) = res["figures"]
    assert row["torch"]["ms"] > 0 and row["torch"]["peak_mib"] is None
    assert "| 40 | 16 | 4 |" in (tmp_path / "lowrank_ffn-cpu.md").read_text()


def test_decode_benchmark_on_cpu(tmp_path):
    """CPU run at tiny sizes: eager decode only (the captured step is a GPU figure), a prompt
    longer than baseline's position table skipped, JSON + table under the -cpu name."""
    rc = _script("decode").main([
        "--set", "model.d_model=32", "--set", "model.n_layers=2", "--set", "model.n_heads=2",
        "--set", "model.vocab_size=128", "--set", "model.max_seq_len=40", "--prompt-lens", "24", "50",
        "--prefill-chunk", "16", "--prefill-repeats", "1", "--decode-prompt", "5", "--decode-warmup", "1",
        "--decode-tokens", "4", "--dtype", "fp32", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "decode-cpu.json").read_text())
    assert res["benchmark"] == "decode" and ENV_KEYS <= res.keys() and res["device_type"] == "cpu"
    assert "random" in res["config"]["weights"] and res["config"]["batch"] == 1
    base, std, com = res["figures"]
    assert [(r["preset"], r["mixer"]) for r in res["figures"]] == [
        ("baseline", "attention"), ("standard", "semiseparable + attention at [1]"), ("compact", "semiseparable")]
    for r in (base, std, com):
        d = r["decode"]
        assert "captured" not in d and d["eager"]["step_ms"] > 0 and d["eager"]["generate_ms_per_token"] > 0
        assert d["eager"]["generate_cuda_graph"] is False
    for r in (base, std):  # an attention layer's KV cache is sized by max_seq_len
        assert r["prefill"][1] == {"N": 50, "skipped": "longer than model.max_seq_len=40"}
    for p in (base["prefill"][0], std["prefill"][0], *com["prefill"]):
        assert p["parallel_tokens_per_s"] > 0 and p["stepwise_tokens_per_s"] > 0 and p["stepwise_path"] == "eager"
        assert p["max_abs_diff"] < 1e-4  # fp32: parallel and stepwise last logits agree
    assert [p["N"] for p in com["prefill"]] == [24, 50]
    assert std["prefill"][0]["paths"]["semiseparable"] == com["prefill"][0]["paths"]["semiseparable"] == ["chunked"]
    md = (tmp_path / "decode-cpu.md").read_text()
    assert "| `compact` | 50 |" in md and "longer than model.max_seq_len=40" in md


def test_decode_memory_benchmark_on_cpu(tmp_path):
    """CPU run at tiny sizes: attention's KV cache grows with the context, the semiseparable and
    holographic states do not; JSON + table under the -cpu name (no decode peak off CUDA)."""
    rc = _script("decode_memory").main([
        "--contexts", "16", "64", "--tokens", "3", "--warmup", "1", "--dtype", "fp32", "--prefill-chunk", "16",
        "--set", "model.d_model=32", "--set", "model.n_layers=2", "--set", "model.n_heads=2",
        "--set", "model.vocab_size=128", "--set", "model.mixer.holographic.hcm_dim=30", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "decode_memory-cpu.json").read_text())
    assert res["benchmark"] == "decode_memory" and ENV_KEYS <= res.keys() and res["config"]["contexts"] == [16, 64]
    rows = {p["preset"]: p for p in res["figures"]}
    assert [rows[n]["mixer"] for n in ("baseline", "standard", "compact", "hamt-100m")] == [
        "attention", "semiseparable + attention at [1]", "semiseparable", "holographic"]
    kv = [r["state_mib"] for r in rows["baseline"]["contexts"]]
    assert kv[1] / kv[0] == pytest.approx((64 + 5) / (16 + 5))  # the cache holds max_seq_len = L + 4 + 1 positions
    # standard's one attention layer of two: half of baseline's cache growth
    assert rows["standard"]["peak_spread"]["value"] > 0
    for name in ("compact", "hamt-100m"):
        assert rows[name]["peak_spread"] == {"of": "state_mib", "value": 0.0}
        assert all(r["step_ms"] > 0 and r["decode_peak_mib"] is None for r in rows[name]["contexts"])
    # hamt: one (S, 2F) fp32 memory per layer, S = 16 slots, F = 30 // 2 + 1
    assert rows["hamt-100m"]["contexts"][0]["state_mib"] * 2**20 == 2 * 16 * 32 * 4  # two layers
    assert rows["hamt-100m"]["contexts"][0]["paths"]["holographic"] == ["chunked"]
    md = (tmp_path / "decode_memory-cpu.md").read_text()
    assert "| `hamt-100m` | holographic | 64 |" in md and "`hamt-100m` 0.0 %" in md


def test_profile_mixer_on_cpu(tmp_path):
    """CPU run at tiny sizes: every layer profiled, op groups summing to the recorded total, the
    holographic layer's FFTs among its ops; JSON + Markdown under the -cpu name."""
    rc = _script("profile_mixer").main([
        "--seq", "40", "--tokens", "80", "--d-model", "32", "--heads", "2", "--hcm-dim", "30", "--slots", "4",
        "--warmup", "1", "--steps", "2", "--top", "50", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "profile_mixer-cpu.json").read_text())
    assert res["benchmark"] == "profile_mixer" and ENV_KEYS <= res.keys() and res["config"]["B"] == 2
    assert set(res["figures"]) == {"attention_layer", "semiseparable_layer", "holographic_layer"}
    for row in res["figures"].values():
        parts = sum(t["ms_per_step"] for t in row["top"]) + row["rest"]["ms_per_step"]
        assert row["kernel_ms_per_step"] > 0 and parts == pytest.approx(row["kernel_ms_per_step"])
    holo = " ".join(t["kernel"] for t in res["figures"]["holographic_layer"]["top"])
    assert "fft" in holo
    assert "### holographic_layer:" in (tmp_path / "profile_mixer-cpu.md").read_text()
