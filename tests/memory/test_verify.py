"""`muse verify` end to end on CPU (estimate mode): every section, labelled, consistent."""

import json

import pytest

from muse.cli import main
from muse.memory import verify


def _check(res: dict, full: bool) -> None:
    assert res["method"] == "estimate"
    for section in ("tt_compression", "tt_runtime", "full_model", "budget_8gib"):
        assert res[section], section
    comp = {(r["vocab"], r["dim"], r["rank"]): r for r in res["tt_compression"]}
    assert len(comp) == 6 and comp[(10_000, 512, 16)]["tt_params"] == 46_720
    assert all(r["compression"] > 0.99 for r in comp.values())
    for r in res["tt_runtime"]:
        assert r["tt_peak"] < r["nn_embedding_peak"]
    base = res["full_model"][0]
    assert base["label"] == "baseline fp32" and base["train_reduction"] == 0.0
    for r in res["full_model"]:
        assert r["train"]["peak"] >= r["fwdbwd"]["peak"]
        assert r["train_reduction"] == pytest.approx(1 - r["train"]["peak"] / base["train"]["peak"])
    for r in res["budget_8gib"]:
        assert r["status"] in ("PASS (estimate)", "FAIL (estimate)")
        assert (r["status"] == "PASS (estimate)") == (r["peak"] <= 8 * 2**30)
    if full:
        assert {r["variant"] for r in res["budget_8gib"]} >= {"dense", "compressed", "phase8-max"}


def test_verify_cli_estimate_every_section(tmp_path, monkeypatch, capsys):
    # the full suite takes minutes on 2 cores (test_verify_full, marked slow): keep one row of
    # each kind here, so every section and code path still runs end to end
    monkeypatch.setattr(verify, "TT_SHAPES", [(10_000, 512)])
    monkeypatch.setattr(verify, "FULL_MODEL", [verify.FULL_MODEL[0], verify.FULL_MODEL[3], verify.FULL_MODEL[6]])
    monkeypatch.setattr(verify, "BUDGET_RUNS", [verify.BUDGET_RUNS[0], verify.BUDGET_RUNS[1]])
    monkeypatch.setattr(verify, "TT_RANKS", [4, 8, 16])
    out = tmp_path / "v"
    assert main(["verify", "--out", str(out), "--device", "cpu"]) == 0
    res = json.loads((out / "verify.json").read_text())
    md = (out / "verify.md").read_text()
    assert "# muse verify (estimate)" in md and "## 4. The 8 GiB check" in md
    captured = capsys.readouterr()
    assert "(estimate)" in captured.out
    # one progress line per row on stderr (a GPU run takes many minutes)
    assert "muse verify [3] ultra train: peak " in captured.err
    assert captured.err.count("muse verify [4] ") == 2 and "PASS (estimate) peak" in captured.err
    assert res["method"] == "estimate"
    for section in ("tt_compression", "tt_runtime", "full_model", "budget_8gib"):
        assert res[section]
    assert [r["label"] for r in res["full_model"]] == ["baseline fp32", "baseline pure bf16 + checkpointing", "ultra"]
    assert res["full_model"][2]["train"]["precision"] == "bf16-pure"  # the preset's own memory settings


@pytest.mark.slow
def test_verify_full(tmp_path):
    res = verify.run_verify(tmp_path, device="cpu")
    _check(res, full=True)
