"""What ``python -m pipeline anchors`` writes: the fitted section, the before/after table, a plot.

The per size / shape / class figures come from :func:`pipeline.data.anchor_fit.anchor_fit`
(the same summary as ``reports/anchor_fit.json``), fed the best IoUs computed by
:class:`~pipeline.anchor_search.geometry.BoxGrid`.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.anchor_search.search import AnchorSet, FitResult
from pipeline.anchor_search.thresholds import ThresholdProposal
from pipeline.data.anchor_fit import WARN_BELOW

__all__ = ["comparison_rows", "exp_run_command", "format_table", "plot_fit", "write_section"]

ANCHOR_KEYS = ("model.anchors.scales", "model.anchors.aspect_ratios", "model.rpn.iou_thresholds")


def comparison_rows(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per group (all, size buckets, shapes, classes): boxes, BPR and mean best IoU before/after."""
    groups: list[tuple[str, dict, dict]] = [("all boxes", before, after)]
    for section in ("by_size", "by_shape", "by_class"):
        for name, b in (before.get(section) or {}).items():
            label = f"size {name}" if section == "by_size" else f"class {name}" if section == "by_class" else name
            groups.append((label, b, after[section][name]))
    return [{"group": label, "boxes": b["num_boxes"], "bpr_before": b["bpr"], "bpr_after": a["bpr"],
             "mean_iou_before": b["mean_best_iou"], "mean_iou_after": a["mean_best_iou"]}
            for label, b, a in groups]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as an aligned text table."""
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    header = f"{'':24} {'boxes':>7}  {'BPR before':>10} {'after':>6}  {'mean IoU before':>15} {'after':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['group'][:24]:24} {r['boxes']:>7}  {f(r['bpr_before']):>10} {f(r['bpr_after']):>6}  "
                     f"{f(r['mean_iou_before']):>15} {f(r['mean_iou_after']):>6}")
    return "\n".join(lines)


def _value_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def exp_run_command(anchors: AnchorSet, thresholds: ThresholdProposal) -> str:
    """``dvc exp run -S ...`` that trains with ``anchors`` and the RPN ``thresholds`` (same dotted keys as ``--set``)."""
    section = anchors.as_params()
    values = {"model.anchors.scales": section["scales"], "model.anchors.aspect_ratios": section["aspect_ratios"],
              "model.rpn.iou_thresholds": thresholds.as_params()}
    args = ["-S " + shlex.quote(f"{key}={_value_text(values[key])}") for key in ANCHOR_KEYS]
    return " ".join(["dvc exp run", *args])


def write_section(result: FitResult, thresholds: ThresholdProposal, path: Path, *, train_json: str,
                  resize: tuple[int, int], levels: Sequence[int]) -> Path:
    """``reports/anchors.yaml``: the fitted ``model.anchors`` section and the proposed
    ``model.rpn.iou_thresholds``, mergeable into params.yaml, with a header saying what they were
    fitted to and how to use them."""
    s0, s1 = result.start_score, result.fitted_score
    header = [
        f"# model.anchors fitted by `python -m pipeline anchors` to {train_json} ({s1.num_boxes} boxes,",
        f"# data.resize {resize[0]}/{resize[1]}, fpn_levels {list(levels)}, {result.budget} anchors per location).",
        f"# Best possible recall at RPN foreground IoU {result.fg_iou}: {s0.bpr:.4f} -> {s1.bpr:.4f} "
        f"(mean best IoU {s0.mean_iou:.4f} -> {s1.mean_iou:.4f}).",
    ]
    if not result.improved:
        header.append("# No better anchors were found: these are the configured ones.")
    header.append(f"# RPN IoU thresholds proposed for them: {thresholds.as_params()} ({thresholds.coverage:.1%} of "
                  f"boxes have a fitted anchor at IoU >= {thresholds.foreground}; background = foreground - margin).")
    header += [f"# Train with them:   {exp_run_command(result.fitted, thresholds)}",
               "# or write them into params.yaml:   python -m pipeline anchors --apply"]
    section = result.fitted.as_params()  # flow lists (JSON is YAML), as params.yaml writes them
    body = ("model:\n  anchors:\n"
            f"    scales: {json.dumps(section['scales'])}\n    aspect_ratios: {json.dumps(section['aspect_ratios'])}\n"
            f"  rpn:\n    iou_thresholds: {json.dumps(thresholds.as_params())}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + body)
    return path


def plot_fit(path: Path, wh: np.ndarray, strides: Sequence[int], result: FitResult, best_before: np.ndarray,
             best_after: np.ndarray, rows: Sequence[dict[str, Any]]) -> Path:
    """Three panels: box shapes with the anchor shapes before/after, best-IoU histograms,
    BPR per size and shape group before/after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    w, h = np.maximum(wh[:, 0], 0.5), np.maximum(wh[:, 1], 0.5)
    bins = np.geomspace(min(w.min(), h.min()) * 0.8, max(w.max(), h.max()) * 1.25, 60)
    ax.hist2d(w, h, bins=[bins, bins], cmap="Greys", cmin=1)
    for anchors, style, label in ((result.start, dict(marker="x", color="tab:blue", s=40), "configured"),
                                  (result.fitted, dict(marker="o", facecolors="none", edgecolors="tab:red", s=50),
                                   "fitted")):
        for level, shapes in enumerate(anchors.shapes(strides)):
            ax.scatter(shapes[:, 0], shapes[:, 1], label=label if level == 0 else None, **style)
    ax.set(xscale="log", yscale="log", xlabel="width (px, after resize)", ylabel="height (px)",
           title="boxes (grey) and anchor shapes")
    ax.legend(fontsize=8)

    ax = axes[1]
    edges = np.linspace(0, 1, 41)
    ax.hist(best_before, bins=edges, alpha=0.55, label=f"configured (BPR {result.start_score.bpr:.3f})")
    ax.hist(best_after, bins=edges, alpha=0.55, label=f"fitted (BPR {result.fitted_score.bpr:.3f})")
    ax.axvline(result.fg_iou, color="k", linestyle="--", label=f"RPN foreground IoU {result.fg_iou}")
    ax.set(xlabel="best anchor IoU per box", ylabel="boxes")
    ax.legend(fontsize=8)

    ax = axes[2]
    groups = [r for r in rows if not r["group"].startswith("class ")]
    x = np.arange(len(groups))
    ax.bar(x - 0.2, [r["bpr_before"] or 0.0 for r in groups], width=0.4, label="configured")
    ax.bar(x + 0.2, [r["bpr_after"] or 0.0 for r in groups], width=0.4, label="fitted")
    ax.set_xticks(x, [r["group"].split(" (")[0] for r in groups], rotation=25, fontsize=8)
    ax.axhline(WARN_BELOW, color="k", linestyle=":")
    ax.set(ylabel="best possible recall", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    fig.suptitle(f"anchor fit: {result.budget} anchors per location, BPR {result.start_score.bpr:.3f} -> "
                 f"{result.fitted_score.bpr:.3f}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
