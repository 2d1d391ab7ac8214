"""The plots of ``muse compare``: which figures, and labels that stay readable."""

import pytest

from muse.compare import report
from tests.compare_runs import result_row as _row


def test_plots_from_rows_include_throughput_vs_length(tmp_path):
    pytest.importorskip("matplotlib")
    from muse.compare.plots import write_plots

    rows = []
    for n in (256, 512):
        for fam, label in (("dense", "d"), ("muse", "m")):
            r = _row(f"{label}@{n}", fam, 100.0 if fam == "dense" else 50.0, 40.0 if fam == "dense" else 45.0,
                     group=f"{label}@{n}")
            r.update(spec_label=label, seq_len=n, tokens_per_s_median=1000.0 * n / 256, val_curve=[[1, 5.0], [2, 4.0]])
            rows.append(r)
    rows.append({**_row("cut", "muse", 30.0, 20.0, status="incomplete"), "val_curve": [[1, 6.0]]})
    written = write_plots(tmp_path, report.select(rows), (256, 512), "t")
    assert sorted(p.name for p in written) == ["ppl_vs_memory.png", "ppl_vs_params.png", "tokens_per_s_vs_seq_len.png",
                                               "val_loss.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_point_labels_do_not_overlap():
    """Four points closer than their labels are long (the Pareto plot's `standard` shapes at
    1,180–1,203 MiB): after ``declutter`` no two labels overlap and every one is inside the axes."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from muse.compare.plots import declutter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [(1180, 40.2), (1203, 40.17), (1204, 41.0), (1598, 39.86)]
    ax.scatter(*zip(*pts))
    for i, p in enumerate(pts):
        ax.annotate(f"standard d=384,h=6,L={i}", p, fontsize=6, xytext=(4, 3), textcoords="offset points")
    fig.tight_layout()
    declutter(fig)
    r = fig.canvas.get_renderer()
    boxes, frame = [t.get_window_extent(r) for t in ax.texts], ax.get_window_extent(r)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert all(frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1) for b in boxes)
    plt.close(fig)
