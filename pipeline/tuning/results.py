"""What a finished sweep leaves behind: the trials table, the best params and a plot.

Pure functions over :class:`TrialRecord` (no Ray, no MLflow), so they are tested
directly and reused when a resumed sweep rebuilds its results.
"""

from __future__ import annotations

import csv
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.params import set_dotted
from pipeline.tuning.space import LISTED, Dimension, resolve_config

# Trial outcomes written to trials.csv and to the child MLflow run's `tune.status` tag.
FINISHED, STOPPED, ERROR = "finished", "stopped_early", "error"


@dataclass
class TrialRecord:
    """One trial: its sampled ``config`` (dotted keys) and the metrics it reported.

    ``history`` holds one dict per report, in order; epoch 0 is the anchor-fit report
    made before training.
    """

    trial_id: str
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = FINISHED
    mlflow_run_id: str | None = None

    def __post_init__(self) -> None:
        self.config = plain(self.config)
        self.history = plain(self.history)

    def last(self, key: str) -> float | None:
        for row in reversed(self.history):
            if row.get(key) is not None:
                return row[key]
        return None

    @property
    def epochs(self) -> int:
        return int(self.last("epoch") or 0)


def plain(obj: Any) -> Any:
    """``obj`` with numpy scalars and tuples turned into plain Python (YAML/JSON-safe)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:
        return obj.item()
    return obj


def trial_status(record: TrialRecord, epochs: int, errored: bool) -> str:
    """``error``, ``finished`` (reached ``tune.epochs``) or ``stopped_early`` (by ASHA)."""
    if errored:
        return ERROR
    return FINISHED if record.epochs >= epochs else STOPPED


def best_trial(records: list[TrialRecord], metric: str, mode: str = "max") -> TrialRecord:
    """The trial whose last reported ``metric`` is best; ties go to the trial listed first."""
    scored = [(r.last(metric), i, r) for i, r in enumerate(records)]
    scored = [(m, i, r) for m, i, r in scored if m is not None and math.isfinite(m)]
    if not scored:
        raise ValueError(f"no trial reported {metric}")
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda t: (sign * t[0], -t[1]))[2]


def _cell(value: Any) -> Any:
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return value


def trials_table(records: list[TrialRecord], dims: list[Dimension], metrics: list[str],
                 best: TrialRecord | None = None) -> list[dict[str, Any]]:
    """Rows of ``trials.csv``: id, status, epochs, last metrics, anchor fit, then one column per swept key."""
    rows = []
    for r in records:
        row: dict[str, Any] = {"trial_id": r.trial_id, "status": r.status, "epochs": r.epochs}
        for m in metrics:
            row[m] = r.last(m)
        row["anchor_bpr"] = r.last("anchor_bpr")
        for dim in dims:
            row[dim.key] = _cell(r.config.get(dim.key))
        row["best"] = best is not None and r.trial_id == best.trial_id
        row["mlflow_run_id"] = r.mlflow_run_id
        rows.append(row)
    return rows


def write_trials_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0]) if rows else ["trial_id", "status", "epochs"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


Named = dict[str, dict[str, Any]]  # what names in a trial config stand for (space.named_values)


def best_params(record: TrialRecord, base: dict[str, Any], named: Named | None = None) -> dict[str, Any]:
    """The winner's params in the nested shape of ``params.yaml``.

    The whole ``model`` section of the winning trial (so the file validates on its own
    and merges over ``params.yaml``), plus any other swept key (e.g. ``train.lr``). Names
    (``model.anchors: fitted``) are replaced by the sections they stand for.
    """
    model = json.loads(json.dumps(base.get("model", {})))  # deep copy of plain data
    out: dict[str, Any] = {"model": model}
    for key, value in resolve_config(record.config, named).items():
        set_dotted(out, key, value)
    return out


def leaves(key: str, value: Any) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of every non-section value under ``key`` (a section is expanded)."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in leaves(f"{key}.{k}", v)]
    return [(key, value)]


def set_commands(record: TrialRecord, named: Named | None = None) -> list[str]:
    """``-S key=value`` arguments of ``dvc exp run`` that reproduce the winner's swept keys
    (a swept section, e.g. ``model.anchors``, as one argument per key inside it)."""
    args = []
    for key, value in resolve_config(record.config, named).items():
        for leaf_key, leaf in leaves(key, value):
            text = json.dumps(leaf) if isinstance(leaf, list | tuple) else yaml.safe_dump(leaf).split("\n")[0]
            args.append(f"-S {shlex.quote(f'{leaf_key}={text}')}")
    return args


def train_best_command(record: TrialRecord, named: Named | None = None) -> str:
    """The one-liner that trains the winner through the DVC pipeline as an experiment."""
    return " ".join(["dvc exp run", *set_commands(record, named)])


def write_best_params(record: TrialRecord, base: dict[str, Any], path: str | Path, *,
                      metric: str, sweep_id: str, named: Named | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f"{key}: {value}" for key, value in record.config.items()
             if isinstance(value, str) and value in (named or {}).get(key, {})]
    header = (
        f"# Best trial {record.trial_id} of sweep {sweep_id}: {metric} = {record.last(metric)}\n"
        + (f"# ({', '.join(names)}: the values below)\n" if names else "")
        + f"# Train it through DVC:   {train_best_command(record, named)}\n"
        f"# or write it into params.yaml:   python -m pipeline tune --apply\n"
    )
    path.write_text(header + yaml.safe_dump(best_params(record, base, named), sort_keys=False,
                                            default_flow_style=None, width=4096))
    return path


def apply_best_params(best_path: str | Path, params_path: str | Path, keys: list[str]) -> list[str]:
    """Write ``keys`` (dotted) from ``best_path`` into ``params_path``, keeping its comments.

    Returns the ``key=value`` changes made. A key naming a section (``model.anchors``) writes
    each key inside it, so the comments on those lines stay.
    """
    from ruamel.yaml import YAML  # a DVC dependency; round-trips comments and layout

    best = yaml.safe_load(Path(best_path).read_text())
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # never wrap a long line
    rt.representer.add_representer(  # keep `null` written as such (ruamel would leave it empty)
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = rt.load(Path(params_path).read_text())
    changes = []
    expanded = []
    for key in keys:
        value: Any = best
        for part in key.split("."):
            value = value[part]
        expanded += leaves(key, value)
    for key, value in expanded:
        node = doc
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                from ruamel.yaml.comments import CommentedMap

                node[part] = CommentedMap()
            node = node[part]
        node[parts[-1]] = _flow(value)
        changes.append(f"{key}={json.dumps(value)}")
    with Path(params_path).open("w") as f:
        rt.dump(doc, f)
    return changes


def _flow(value: Any) -> Any:
    """Lists written inline (``[4, 8]``), as ``params.yaml`` writes them."""
    if isinstance(value, list):
        from ruamel.yaml.comments import CommentedSeq

        seq = CommentedSeq(_flow(v) for v in value)
        seq.fa.set_flow_style()
        return seq
    return value


def plot_trials(records: list[TrialRecord], dims: list[Dimension], metric: str, path: str | Path,
                best: TrialRecord | None = None) -> Path:
    """One panel per swept key: the trial's last ``metric`` against the key's value.

    Listed values (anchor scales, aspect-ratio sets, IoU pairs) are categories on the
    x axis; distributions are continuous. Trials stopped early by ASHA are hollow; the
    best trial is ringed in red.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(len(dims), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, dim in zip(axes.flat, dims):
        labels = [json.dumps(v) for v in dim.values] if dim.kind in LISTED else None
        for r in records:
            y = r.last(metric)
            if y is None or dim.key not in r.config:
                continue
            x = labels.index(json.dumps(r.config[dim.key])) if labels else r.config[dim.key]
            filled = r.status == FINISHED
            ax.scatter([x], [y], s=40, edgecolors="C0", facecolors="C0" if filled else "none")
            if best is not None and r.trial_id == best.trial_id:
                ax.scatter([x], [y], s=160, edgecolors="C3", facecolors="none", linewidths=1.5)
        if labels:
            ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=7)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        elif dim.kind == "loguniform":
            ax.set_xscale("log")
        ax.set_title(dim.key, fontsize=9)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(dims):]:
        ax.axis("off")
    fig.suptitle(f"{metric} per trial (hollow: stopped early by ASHA; red ring: best)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
