"""PR curves and per-class AP as CSV (for ``dvc plots``) and PNG (which render offline)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PR_COLUMNS = ("class", "recall", "precision")


def write_pr_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Rows of :func:`pipeline.evaluation.pr_curves` as ``class,recall,precision`` CSV."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PR_COLUMNS)
        writer.writeheader()
        writer.writerows({k: row[k] for k in PR_COLUMNS} for row in rows)


def plot_pr_curves(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "PR curves, IoU 0.5") -> None:
    """One precision-recall line per class."""
    fig = _figure()
    ax = fig.subplots()
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        recall, precision = curves.setdefault(row["class"], ([], []))
        recall.append(row["recall"])
        precision.append(row["precision"])
    for name, (recall, precision) in curves.items():
        ax.plot(recall, precision, label=name)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="lower left", fontsize="small", ncol=max(1, len(curves) // 10))
    else:
        ax.text(0.5, 0.5, "no ground truth", ha="center", va="center")
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_per_class_ap(ap_per_class: Mapping[str, float], path: str | Path, title: str = "AP@[.5:.95] per class"
                      ) -> None:
    """Bar chart of per-class AP; classes without ground truth (AP -1) are left out."""
    items = [(name, ap) for name, ap in ap_per_class.items() if ap >= 0]
    fig = _figure(width=max(6.4, 0.35 * len(items)))
    ax = fig.subplots()
    bars = ax.bar([name for name, _ in items], [ap for _, ap in items], color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", fontsize="small")
    ax.set(ylabel="AP", ylim=(0, 1), title=title)
    ax.tick_params(axis="x", labelrotation=90 if len(items) > 8 else 0)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def _figure(width: float = 6.4, height: float = 4.8):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(figsize=(width, height))
