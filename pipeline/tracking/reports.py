"""Training reports: the per-epoch curve (CSV + PNG) and the summary metrics (JSON)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

__all__ = ["write_bad_images", "write_curve_csv", "write_loss_png", "write_summary"]

_FIRST = ["epoch", "loss"]


def curve_columns(history: list[dict[str, Any]]) -> list[str]:
    """``epoch, loss``, the loss terms, then the rest (lr, throughput, val metrics) in first-seen order."""
    seen: list[str] = []
    for row in history:
        seen += [k for k in row if k not in seen]
    losses = sorted(k for k in seen if k.startswith("loss_"))
    rest = [k for k in seen if k not in _FIRST and k not in losses]
    return [k for k in _FIRST if k in seen] + losses + rest


def write_curve_csv(history: list[dict[str, Any]], path: Path) -> Path:
    """One row per epoch; a validation metric is empty in epochs without validation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = curve_columns(history)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in sorted(history, key=lambda r: r["epoch"]):
            writer.writerow({k: _fmt(row[k]) for k in columns if k in row})
    return path


def write_loss_png(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss terms and total per epoch (left), validation AP if any (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(history, key=lambda r: r["epoch"])
    epochs = [r["epoch"] for r in rows]
    val_keys = [k for k in ("AP", "AP50", "AP75") if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, 2 if val_keys else 1, figsize=(10 if val_keys else 6, 4), squeeze=False)
    ax = axes[0][0]
    for key in curve_columns(rows):
        if key == "loss" or key.startswith("loss_"):
            ax.plot(epochs, [r.get(key) for r in rows], marker="o", lw=2.5 if key == "loss" else 1.2, label=key)
    ax.set(xlabel="epoch", ylabel="training loss (mean over the epoch)", title="Training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if val_keys:
        ax = axes[0][1]
        for key in val_keys:
            pts = [(r["epoch"], r[key]) for r in rows if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
        ax.set(xlabel="epoch", ylabel="COCO AP (val)", title="Validation", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_summary(summary: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return path


def write_bad_images(bad_images: dict[str, str], path: Path) -> Path:
    """``reports/bad_images.json``: every training image that could not be decoded and was skipped
    (``data.bad_images: skip``), ``{"count", "images": [{"file", "error"}, ...]}`` (empty when none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [{"file": file, "error": error} for file, error in sorted(bad_images.items())]
    path.write_text(json.dumps({"count": len(images), "images": images}, indent=2) + "\n")
    return path


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
