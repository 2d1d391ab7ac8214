"""The comparison's figures (matplotlib, an optional extra: ``pip install 'muse[plot]'``).

- ``val_loss.png``: validation loss against training tokens, one line per model (its chosen run:
  with an lr sweep, the best-validation one);
- ``ppl_vs_memory.png``: test perplexity against full-step peak memory, with the dense
  frontier (the best dense model at or under each memory) as a step line: a MUSE point below it
  beats every dense model that fits in its memory;
- ``ppl_vs_params.png``: test perplexity against actual parameters;
- ``tokens_per_s_vs_seq_len.png``: training throughput against sequence length (several lengths only).

Incomplete or failed runs are drawn hollow and grey and labelled so; they never join a line.
Points are labelled by model, shortened (``baseline+d_model=256+n_heads=4`` -> ``baseline
d=256,h=4``); the memory axis is logarithmic where the peaks span more than 10x.
"""

from __future__ import annotations

import math
from pathlib import Path

from muse.compare.run import ppl

STYLE = {"muse": ("tab:red", "o"), "dense": ("tab:blue", "s"), "hf": ("tab:green", "^")}


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def name(r: dict) -> str:
    """A point's label: the model (``group``, without the lr), its overrides shortened."""
    base, *over = r.get("group", r["label"]).split("+")
    over = [o.replace("d_model=", "d=").replace("n_heads=", "h=").replace("n_layers=", "L=") for o in over]
    return base + (" " + ",".join(over) if over else "")


# where a point's label may go, in points from the point, with its alignment: first the usual
# place (above right), then below, then to the left, then further out
PLACES = [((4, 3), "left"), ((4, -9), "left"), ((-4, 3), "right"), ((-4, -9), "right"),
          ((4, 12), "left"), ((4, -18), "left"), ((-4, 12), "right"), ((-4, -18), "right")]


def declutter(fig) -> None:
    """Puts each point label (left to right) at the first of ``PLACES`` where it stays inside the
    axes and overlaps no label placed before it and no other point: measured in display space
    after the layout, whatever the axes' scales. Where none is free, the usual place."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    r = 4 * fig.dpi / 72  # a marker's half-width in pixels
    for ax in fig.axes:
        frame = ax.get_window_extent(renderer)
        points = [ax.transData.transform(t.xy) for t in ax.texts]
        placed: list = []
        for i, t in enumerate(ax.texts):  # the point labels, in the order _scatter drew them
            others = placed + [Bbox.from_extents(x - r, y - r, x + r, y + r) for j, (x, y) in enumerate(points) if j != i]
            for xy, ha in PLACES + PLACES[:1]:
                t.xyann = xy
                t.set_horizontalalignment(ha)
                box = t.get_window_extent(renderer)
                if frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1) \
                        and not any(box.overlaps(o) for o in others):
                    break
            placed.append(box)


def _scatter(ax, rows: list[dict], x_key: str) -> None:
    offset = (4, 3)  # points; declutter moves a label that would overlap another
    for r in sorted(rows, key=lambda r: (r.get(x_key) or 0, ppl(r))):
        x, y = r.get(x_key), ppl(r)
        if not x or not math.isfinite(y):
            continue
        color, marker = STYLE[r["family"]]
        if r["status"] == "complete":
            ax.scatter([x], [y], color=color, marker=marker, zorder=3)
            ax.annotate(name(r), (x, y), fontsize=6, xytext=offset, textcoords="offset points")
        else:
            ax.scatter([x], [y], facecolors="none", edgecolors="grey", marker=marker, zorder=3)
            ax.annotate(f"{name(r)} ({r['status']})", (x, y), fontsize=7, color="grey", xytext=offset,
                        textcoords="offset points")
    for fam, (color, marker) in STYLE.items():
        if any(r["family"] == fam for r in rows):
            ax.scatter([], [], color=color, marker=marker, label={"muse": "MUSE", "dense": "dense GPT-2-style",
                                                                   "hf": "HF GPT2LMHeadModel"}[fam])


def _frontier(rows: list[dict]) -> tuple[list[float], list[float]]:
    """The dense frontier as a step line: best complete dense perplexity at or under each memory."""
    pts = sorted((r["peak_memory_mib"], ppl(r)) for r in rows if r["family"] == "dense" and r["status"] == "complete"
                 and r.get("peak_memory_mib") and math.isfinite(ppl(r)))
    xs, ys, best = [], [], math.inf
    for x, y in pts:
        if y < best:
            best = y
            xs.append(x)
            ys.append(y)
    return xs, ys


def write_plots(out: Path, selected: list[dict], seq_lens: tuple[int, ...], title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 60, not 6x10^1, on the log axes

    written = []

    def save(fig, name: str) -> None:
        path = out / name
        fig.suptitle(title if len(title) <= 90 else title[:87] + "...", fontsize=8)
        fig.tight_layout()
        declutter(fig)
        fig.savefig(path, dpi=130)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in selected:
        curve = r.get("val_curve") or []
        if curve:
            xs, ys = zip(*curve)
            ax.plot(xs, ys, linestyle="-" if r["status"] == "complete" else ":",
                    label=name(r) + ("" if r["status"] == "complete" else f" ({r['status']})"))
    ax.set(xlabel="training tokens", ylabel="validation loss (nats/token)", title="validation loss")
    ax.legend(fontsize=6)
    save(fig, "val_loss.png")

    mem = "(estimate)" if any(r.get("peak_memory_method") == "estimate" for r in selected) else "(measured)"
    fig, ax = plt.subplots(figsize=(9, 5))
    _scatter(ax, selected, "peak_memory_mib")
    xs, ys = _frontier(selected)
    if xs:
        right = max(r["peak_memory_mib"] for r in selected if r.get("peak_memory_mib")) * 1.05
        ax.step(xs + [right], ys + ys[-1:], where="post", color="tab:blue", alpha=0.5, label="dense frontier")
    ax.set(xlabel=f"full-step peak memory, MiB {mem}", ylabel="test perplexity", title="test perplexity vs full-step peak memory")
    peaks = [r["peak_memory_mib"] for r in selected if r.get("peak_memory_mib")]
    if peaks and max(peaks) > 10 * min(peaks):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plain)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.legend(fontsize=7)
    save(fig, "ppl_vs_memory.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _scatter(ax, selected, "actual_params")
    ax.set(xlabel="actual parameters", ylabel="test perplexity", title="test perplexity vs parameters")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.legend(fontsize=7)
    save(fig, "ppl_vs_params.png")

    if len(seq_lens) > 1:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        models = dict.fromkeys(r["spec_label"] for r in selected)
        for m in models:
            pts = sorted((r["seq_len"], r["tokens_per_s_median"]) for r in selected
                         if r["spec_label"] == m and r.get("tokens_per_s_median"))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=m)
        ax.set(xlabel="sequence length", ylabel="training tokens/s (median)", title="training throughput")
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=7)
        save(fig, "tokens_per_s_vs_seq_len.png")
    return written
