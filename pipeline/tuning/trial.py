"""One trial of the sweep: a Ray Tune function trainable around the training driver.

Layer 3 of 3 (see :mod:`pipeline.training`): Ray Train V2 cannot hand a ``TorchTrainer`` to
a ``Tuner``, so each trial is a plain function that reports the anchor fit of its config
at epoch 0 (free: no training needed), then calls :func:`pipeline.driver.fit`, whose
``TuneReportCallback`` (:class:`pipeline.tuning.callbacks.TrialReport`) forwards rank 0's
per-epoch metrics (``epoch``, ``AP50``, ``AP``, the progress rows) and every node's system-metric
samples to Tune, where ASHA may stop the trial and the sweep's driver tracks them
(:class:`pipeline.tracking.trials.TrialTracker`): a trial never touches the tracking store,
so it may run on any node. The trial itself reserves (almost) no resources; its DDP workers
reserve theirs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.params import Params
from pipeline.tuning.space import Dimension, decode_config, resolve_config, trial_params

# What each trial reserves for itself: {"cpu": 0} alone is rejected by Tune.
TRIAL_RESOURCES = {"cpu": 0, "memory": 1 << 20}


@dataclass(frozen=True)
class TrialSpec:
    """Everything a trial needs besides its sampled config (picklable, sent to every trial).

    ``base`` is ``Params.to_dict()`` with the sweep's per-trial settings already applied
    (epochs, workers, no model registration).
    """

    base: dict[str, Any]
    data_dir: str
    train_storage: str            # Ray Train runs of the trials: <train_storage>/<trial_id>
    metric: str
    sweep_id: str
    root: str
    dims: tuple[Dimension, ...] = ()   # to decode Tune's tokens (Optuna samples lists as JSON text)
    search: str = "grid"
    named: dict[str, dict[str, Any]] = field(default_factory=dict)  # {"model.anchors": {"fitted": {...}}}


def trial_values(spec: TrialSpec, config: dict[str, Any]) -> tuple[dict[str, Any], Params]:
    """Tune's sampled ``config`` as params values (names such as ``fitted`` kept, for reports) and
    the trial's :class:`Params` (names resolved)."""
    values = decode_config(list(spec.dims), config, spec.search)
    return values, trial_params(spec.base, resolve_config(values, spec.named))


def anchor_report(params: Params, data_dir: str | Path) -> dict[str, float]:
    """The anchor fit (best possible recall) of ``params``'s anchors on the train split.

    Computed on the boxes after the training resize, at the RPN foreground IoU of the config.
    """
    from pipeline.data.anchor_fit import anchor_fit, gt_from_coco

    coco = json.loads((Path(data_dir) / "train.json").read_text())
    config = params.detector_config(num_classes=max(1, len(coco.get("categories", []))))
    boxes, sizes, _ = gt_from_coco(coco, params.data.resize.min_size, params.data.resize.max_size)
    fit = anchor_fit(boxes, sizes, None, config.strides, config.anchors.scales, config.anchors.aspect_ratios,
                     fg_iou=config.rpn.iou_thresholds[1])
    return {"anchor_bpr": fit["bpr"] if fit["bpr"] is not None else 0.0,
            "anchor_mean_best_iou": fit["mean_best_iou"] if fit["mean_best_iou"] is not None else 0.0}


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """The Tune trainable: anchor fit at epoch 0, then one training run through the driver."""
    from ray import tune

    from pipeline.driver import Tracking, fit
    from pipeline.tuning.callbacks import TrialReport

    trial_id = tune.get_context().get_trial_id()
    _, params = trial_values(spec, config)
    tune.report({"epoch": 0, **anchor_report(params, spec.data_dir)})
    # no tracking here (the sweep's driver logs what Tune receives); preflight ran once for the sweep
    result = fit(params, run_name=trial_id, storage_path=spec.train_storage, callbacks=[TrialReport()],
                 data_dir=spec.data_dir, root=spec.root, tracking=Tracking(mlflow=False), check=None)
    if not any(spec.metric in row for row in result.history):
        raise RuntimeError(f"trial {trial_id}: training reported no {spec.metric} (tune.metric); "
                           f"validation must run every epoch")
