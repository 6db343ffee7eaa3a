"""Quality side by side: our pipeline's defaults vs torchvision's `fasterrcnn_mobilenet_v3_large_320_fpn`.

    python benchmarks/bench_quality.py DATA_DIR [--params params.yaml] [--set KEY=VALUE ...]
        [--epochs N] [--max-images N] [--max-val-images N] [--budget-s S] [--tv-lr LR] [--out FILE]

DATA_DIR is any prepared COCO folder (`python -m pipeline prepare` writes `data/prepared`). Both
models train from scratch on its `train.json` and are scored on its `val.json` by the same code,
`pipeline.evaluation.evaluate_model` (pycocotools COCOeval: AP, AP50, AP75), after the same training
resize (`data.resize`) and the same augmentation (`train.augment`). Both run as
Ray Train DDP with `ray.num_workers` x `ray.cpus_per_worker` and `train.batch_size` images per worker.

- ours: the `train` stage's code path (`pipeline.training.fit`) with the params as given (default:
  the repository's `params.yaml`); validation during training is switched off, both are evaluated after.
- torchvision: `fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None,
  num_classes=C+1, min_size/max_size=data.resize)`: every layer trainable with batch norm (torchvision's
  from-scratch setting) and its own detector settings (the 320 model's RPN: 150 proposals per image at
  test time, score threshold 0.05, ...). Its CPU recipe: the structure of torchvision's detection
  reference recipe (linear warm-up, then decay, no weight decay on norms and biases, gradient clipping)
  with the optimiser that trains from scratch on a CPU here (AdamW, lr `--tv-lr`, default `train.lr`,
  weight decay `train.weight_decay`, cosine decay to 0; SGD stayed far behind in this project's
  ablations, BENCHMARKS.md "How the defaults were found"), then the same precise batch-norm pass as ours
  (`train.precise_bn_images`).

Two modes: **equal epochs** (both `--epochs`, default `train.epochs`) and **equal wall clock**: each
model trains as many epochs as fit into `--budget-s` seconds of training (default: ours' training time
in the first mode; at least one epoch) at the speed it showed in the first mode, with its schedule set for that many
epochs; a run with the same epoch count as the first mode is reused. Training time is the sum of the
epochs' wall times (data loading included; Ray start, worker group, checkpoints and evaluation not).
Prints AP/AP50/AP75, training images/s and the ratios ours/torchvision; `--out` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METRICS = ("AP", "AP50", "AP75")


# --------------------------------------------------------------------------- torchvision's model
def build_torchvision(num_classes: int, min_size: int, max_size: int) -> nn.Module:
    """torchvision's mobile Faster R-CNN, from scratch, for ``num_classes`` foreground classes."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    return fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=num_classes + 1,
                                                 min_size=min_size, max_size=max_size)


class _FeaturesOf(nn.Module):
    """torchvision's detector with the ``features(images)`` method ``recompute_bn_stats`` calls."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def features(self, images: list[torch.Tensor]) -> Any:
        batch, _ = self.detector.transform(images)
        return self.detector.backbone(batch.tensors)


def torchvision_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: train torchvision's model with the recipe of the module docstring."""
    import ray.train
    import ray.train.torch

    from pipeline.data.dataset import CocoDetectionDataset
    from pipeline.data.transforms import build_transforms
    from pipeline.training import state
    from pipeline.training.loader import build_train_loader
    from pipeline.training.losses import training_targets
    from pipeline.training.optim import build_optimizer, build_scheduler, scaled_lr
    from pipeline.training.precise_bn import recompute_bn_stats
    from pipeline.training.worker import _quiet_ray_train_logs

    _quiet_ray_train_logs()
    params = config["params"]
    train, resize = params.train, params.data.resize
    data_dir = Path(config["data_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(params.ray.cpus_per_worker)))
    device = ray.train.torch.get_device()
    dataset = CocoDetectionDataset(data_dir / "train.json", transforms=build_transforms(
        True, resize.min_size, resize.max_size, train.augment.recipe()))
    # the training stage's own loader (shard sampler, aspect-ratio groups, loader workers): the same batches as ours
    train_loader = build_train_loader(dataset, train, rank=rank, world=world, device=device,
                                      local_world_size=ctx.get_local_world_size())
    loader, sampler = train_loader.loader, train_loader.sampler
    if len(loader) == 0:
        raise ValueError(f"{len(dataset)} train images are fewer than {world} workers x {train.batch_size}")
    torch.manual_seed(train.seed)
    model = ray.train.torch.prepare_model(build_torchvision(dataset.num_classes, resize.min_size, resize.max_size))
    bare = model.module if hasattr(model, "module") else model
    optimizer = build_optimizer(bare, train, scaled_lr(train, world))
    scheduler = build_scheduler(optimizer, train, len(loader))
    history = []
    for epoch in range(train.epochs):
        state.seed_everything(train.seed, epoch, rank)
        sampler.set_epoch(epoch)
        model.train()
        start, seen, loss_sum = time.perf_counter(), 0, 0.0
        for images, targets in loader:
            targets = [{k: v.to(device) for k, v in t.items()} for t in training_targets(targets)]
            losses = model([img.to(device) for img in images], targets)
            total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if train.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(bare.parameters(), train.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            seen += len(images) * world
            loss_sum += float(total.detach())
        seconds = time.perf_counter() - start
        history.append({"epoch": epoch + 1, "loss": loss_sum / len(loader), "images_per_s": seen / seconds,
                        "epoch_time_s": seconds})
        if rank == 0:
            print(f"[torchvision] epoch {epoch + 1}/{train.epochs}: loss {history[-1]['loss']:.3f}, "
                  f"{history[-1]['images_per_s']:.1f} img/s", flush=True)
        if rank != 0 or epoch + 1 < train.epochs:
            ray.train.report(history[-1], checkpoint=None)
            continue
        if train.precise_bn_images:
            eval_ds = CocoDetectionDataset(data_dir / "train.json",
                                           transforms=build_transforms(False, resize.min_size, resize.max_size))
            recompute_bn_stats(_FeaturesOf(bare), eval_ds, num_images=train.precise_bn_images)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"model": bare.state_dict(), "history": history, "num_classes": dataset.num_classes},
                       Path(tmp) / "model.pt")
            ray.train.report(history[-1], checkpoint=ray.train.Checkpoint.from_directory(tmp))


def train_torchvision(params: Any, data_dir: Path, storage: Path, name: str) -> tuple[nn.Module, dict[str, Any]]:
    """Train torchvision's model with Ray Train; returns the model (eval mode) and a summary."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.driver.preflight import worker_request

    rp = params.ray
    trainer = TorchTrainer(
        torchvision_loop_per_worker, train_loop_config={"params": params, "data_dir": str(data_dir)},
        scaling_config=ray.train.ScalingConfig(num_workers=rp.num_workers, use_gpu=rp.use_gpu,
                                               resources_per_worker=worker_request(params)),
        torch_config=TorchConfig(backend="nccl" if rp.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(name=name, storage_path=str(storage),
                                       logging_config=ray.train.LoggingConfig(log_level="WARNING")),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as directory:
        saved = torch.load(Path(directory) / "model.pt", weights_only=False)
    resize = params.data.resize
    model = build_torchvision(saved["num_classes"], resize.min_size, resize.max_size)
    model.load_state_dict(saved["model"])
    return model.eval(), _summary(saved["history"], model)


def train_ours(params: Any, data_dir: Path, storage: Path, name: str) -> tuple[nn.Module, dict[str, Any]]:
    """Train our detector through the pipeline's training driver; returns the model and a summary."""
    from pipeline.driver import fit

    result = fit(params, run_name=name, storage_path=str(storage), data_dir=data_dir, root=REPO)
    return result.model.eval(), _summary(result.history, result.model)


def _summary(history: list[dict[str, Any]], model: nn.Module) -> dict[str, Any]:
    train_time = sum(r["epoch_time_s"] for r in history)
    images = sum(r["images_per_s"] * r["epoch_time_s"] for r in history)
    return {"epochs": len(history), "train_time_s": round(train_time, 1),
            "images_per_s": round(images / max(train_time, 1e-9), 2),
            "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}


# --------------------------------------------------------------------------- data, evaluation
def subset(data_dir: Path, out: Path, max_train: int | None, max_val: int | None) -> Path:
    """``data_dir`` itself, or a folder with the first images of each split (other entries linked)."""
    if max_train is None and max_val is None:
        return data_dir
    out.mkdir(parents=True)
    for entry in data_dir.iterdir():
        if entry.name not in ("train.json", "val.json"):
            (out / entry.name).symlink_to(entry.resolve())
    for split, limit in (("train", max_train), ("val", max_val)):
        coco = json.loads((data_dir / f"{split}.json").read_text())
        if limit is not None:
            coco["images"] = coco["images"][:limit]
            keep = {img["id"] for img in coco["images"]}
            coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
        (out / f"{split}.json").write_text(json.dumps(coco))
    return out


def evaluate(model: nn.Module, data_dir: Path, params: Any) -> dict[str, float]:
    from pipeline.data.dataset import CocoDetectionDataset
    from pipeline.data.transforms import build_transforms
    from pipeline.evaluation import evaluate_model

    resize = params.data.resize
    dataset = CocoDetectionDataset(data_dir / "val.json",
                                   transforms=build_transforms(False, resize.min_size, resize.max_size))
    torch.set_num_threads(max(1, int(params.ray.cpus_per_worker) * params.ray.num_workers))
    metrics = evaluate_model(model, dataset, batch_size=params.evaluate.batch_size, score_threshold=0.0)
    return {**{k: round(float(metrics[k]), 4) for k in METRICS},
            "eval_images_per_s": round(float(metrics["images_per_s"]), 1)}


def with_epochs(params: Any, epochs: int) -> Any:
    from pipeline.params import params_from_dict, set_dotted

    raw = params.to_dict()
    set_dotted(raw, "train.epochs", epochs)
    out = params_from_dict(raw)
    out.source_path = params.source_path
    return out


# --------------------------------------------------------------------------- main
def _table(rows: list[dict[str, Any]]) -> str:
    head = f"{'mode':18} {'model':13} {'epochs':>6} {'train s':>8} {'img/s':>7} {'AP':>7} {'AP50':>7} {'AP75':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["model"] == "ours/tv":
            lines.append(f"{'':18} {'ours / tv':13} {'':>6} {'':>8} {r['images_per_s']:>6.2f}x "
                         + " ".join(f"{r[k]:>6.2f}x" if r[k] is not None else f"{'-':>7}" for k in METRICS))
        else:
            lines.append(f"{r['mode']:18} {r['model']:13} {r['epochs']:>6} {r['train_time_s']:>8.0f} "
                         f"{r['images_per_s']:>7.2f} " + " ".join(f"{r[k]:>7.3f}" for k in METRICS))
    return "\n".join(lines)


def _ratio_row(mode: str, ours: dict[str, Any], tv: dict[str, Any]) -> dict[str, Any]:
    return {"mode": mode, "model": "ours/tv",
            "images_per_s": ours["images_per_s"] / max(tv["images_per_s"], 1e-9),
            **{k: (ours[k] / tv[k] if tv[k] > 0 else None) for k in METRICS}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="a prepared COCO folder (train.json, val.json, images)")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="params override for both runs, as `python -m pipeline --set`")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the equal-epochs mode (default: train.epochs)")
    parser.add_argument("--max-images", type=int, default=None, help="train on the first N train images")
    parser.add_argument("--max-val-images", type=int, default=None, help="evaluate on the first N val images")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="training seconds of the equal-wall-clock mode (default: ours' time in the first mode)")
    parser.add_argument("--tv-lr", type=float, default=None, help="torchvision's learning rate (default: train.lr)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    from pipeline import driver
    from pipeline.params import ParamsError, load_params, params_from_dict, set_dotted

    for split in ("train.json", "val.json"):
        if not (args.data_dir / split).is_file():
            print(f"error: {args.data_dir / split} not found: pass a prepared COCO folder "
                  f"(`python -m pipeline prepare` writes data/prepared)", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    try:
        params = load_params(args.params, args.overrides)
        raw = params.to_dict()
        for key, value in (("train.val_every", 0), ("mlflow.tracking_uri", f"sqlite:///{work / 'mlflow.db'}"),
                           ("mlflow.log_model", False), ("mlflow.registered_model_name", None),
                           ("mlflow.experiment_name", "bench-quality"), ("ray.storage_path", str(work / "ray"))):
            set_dotted(raw, key, value)
        ours_params = params_from_dict(raw)
        tv_raw = json.loads(json.dumps(raw))
        if args.tv_lr is not None:
            set_dotted(tv_raw, "train.lr", args.tv_lr)
        tv_params = params_from_dict(tv_raw)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    epochs = args.epochs or params.train.epochs
    data_dir = subset(args.data_dir.resolve(), work / "data", args.max_images, args.max_val_images)
    n_train = len(json.loads((data_dir / "train.json").read_text())["images"])
    print(f"data: {data_dir} ({n_train} train images), resize {params.data.resize.min_size}/"
          f"{params.data.resize.max_size}, {params.ray.num_workers} workers x {params.train.batch_size} images; "
          f"load average {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)

    started = driver.ensure_ray(params.ray.address)
    results: dict[str, dict[str, Any]] = {}
    try:
        runs: dict[tuple[str, int], dict[str, Any]] = {}

        def run(which: str, n_epochs: int) -> dict[str, Any]:
            if (which, n_epochs) not in runs:
                base = ours_params if which == "ours" else tv_params
                p = with_epochs(base, n_epochs)
                trainer = train_ours if which == "ours" else train_torchvision
                t0 = time.perf_counter()
                model, summary = trainer(p, data_dir, work / "ray", f"{which}-{n_epochs}ep-{int(t0)}")
                summary["wall_s"] = round(time.perf_counter() - t0, 1)
                summary |= evaluate(model, data_dir, p)
                runs[(which, n_epochs)] = summary
                print(f"{which} {n_epochs} epoch(s): {summary}", flush=True)
            return runs[(which, n_epochs)]

        results["equal_epochs"] = {"ours": run("ours", epochs), "torchvision": run("torchvision", epochs)}
        budget = args.budget_s or results["equal_epochs"]["ours"]["train_time_s"]
        fit_epochs = {}
        for which in ("ours", "torchvision"):
            first = results["equal_epochs"][which]
            per_epoch = first["train_time_s"] / first["epochs"]
            fit_epochs[which] = max(1, math.floor(budget / per_epoch + 1e-6))
        results["equal_wall_clock"] = {"budget_s": round(budget, 1),
                                       **{w: run(w, n) for w, n in fit_epochs.items()}}
    finally:
        if started:
            import ray

            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)  # checkpoints, MLflow db, the data subset

    rows = []
    for mode, label in (("equal_epochs", "equal epochs"), ("equal_wall_clock", "equal wall clock")):
        ours, tv = results[mode]["ours"], results[mode]["torchvision"]
        rows += [{"mode": label, "model": "ours", **ours}, {"mode": "", "model": "torchvision", **tv},
                 _ratio_row(label, ours, tv)]
    print()
    print(_table(rows))
    print(f"equal wall clock: {results['equal_wall_clock']['budget_s']} s of training each; parameters: ours "
          f"{results['equal_epochs']['ours']['parameters_M']} M, torchvision "
          f"{results['equal_epochs']['torchvision']['parameters_M']} M; "
          f"load average {Path('/proc/loadavg').read_text().split()[:3]}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"data_dir": str(args.data_dir), "train_images": n_train, **results},
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
