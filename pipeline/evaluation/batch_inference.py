"""The driver side of batch inference on the Ray cluster (Ray Data), for ``evaluate`` and ``predict``.

The images become a Dataset of ``{"id", "path"}`` rows; decoding (read + the evaluation resize) runs
in parallel Ray tasks (:func:`pipeline.evaluation.replica.decode_batch`); the detector runs in an
autoscaling pool of actors (:class:`pipeline.evaluation.replica.DetectorReplica`, ``map_batches`` with
``concurrency=(min, max)``), each holding one copy of the model taken from Ray's object store (put
there once). Results stream back to the driver row by row (``iter_batches``): the driver never holds
the images, and holds the detections only as long as its caller keeps them.

Unreadable images follow the bad-image policy: ``skip`` lists each one (console and outputs) and
fails the run when more than ``max_bad_fraction`` of the images are bad; ``fail`` stops at the first.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.data.errors import ImageError
from pipeline.evaluation.replica import DetectorReplica, decode_batch
from pipeline.params import EvaluateParams, ResizeParams

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "fail")


class BadImagesError(ImageError):
    """Too many unreadable images for the bad-image policy (or one, under ``fail``); an
    :class:`~pipeline.data.errors.ImageError`, as the in-process path raises."""


@dataclass
class StreamStats:
    """What a streamed run saw: counts, the skipped files, the replicas' forward time, the nodes used."""

    images: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)   # [{"path", "error"}]
    forward_s: float = 0.0
    decode_nodes: set[str] = field(default_factory=set)
    replica_nodes: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        read = self.images - len(self.skipped)
        return {"num_images": self.images, "num_skipped": len(self.skipped), "skipped": self.skipped,
                "images_per_s": round(read / self.forward_s, 3) if self.forward_s > 0 else 0.0,
                "ms_per_image": round(1000.0 * self.forward_s / read, 3) if read else 0.0,
                "decode_nodes": sorted(self.decode_nodes), "replica_nodes": sorted(self.replica_nodes)}


def check_policy(bad_images: str, max_bad_fraction: float) -> None:
    if bad_images not in BAD_IMAGE_POLICIES or not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"data.bad_images must be one of {BAD_IMAGE_POLICIES} (got {bad_images!r}) and "
                         f"data.max_bad_fraction in [0, 1] (got {max_bad_fraction})")


def stream_detections(items: Sequence[dict[str, Any]], model: Any, settings: EvaluateParams, resize: ResizeParams,
                      *, stats: StreamStats, bad_images: str = "skip", max_bad_fraction: float = 0.001,
                      exif_orientation: str = "apply", progress: bool = True, desc: str = "inference"
                      ) -> Iterator[dict[str, Any]]:
    """Detect on every ``{"id", "path"}`` of ``items`` on the Ray cluster (Ray must be initialised).

    ``model`` is the detector, or its checkpoint's bytes (:func:`pipeline.inference.loading.checkpoint_bytes`),
    which the replicas load: the driver then never imports torch.

    Yields one row per readable image, in completion order: ``{"id", "path", "height", "width",
    "detections": [COCO results, original pixels]}``. Unreadable images are listed in
    ``stats.skipped`` (and logged) instead; ``stats`` also gathers the counts, forward time and nodes.

    Raises:
        BadImagesError: under ``fail`` at the first unreadable image; under ``skip`` at the end when
            more than ``max_bad_fraction`` of the images were unreadable.
    """
    import ray
    from tqdm import tqdm

    check_policy(bad_images, max_bad_fraction)
    _quiet_own_progress_setting()
    ray.data.DataContext.get_current().enable_progress_bars = False  # one bar: the driver's, in images
    dataset = _inference_dataset(items, ray.put(model), settings, resize, exif_orientation)
    with tqdm(total=len(items), desc=desc, unit="img", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for row in _rows(batch):
                stats.images += 1
                stats.decode_nodes.add(row.pop("decode_node"))
                stats.replica_nodes.add(row.pop("replica_node"))
                stats.forward_s += row.pop("forward_s")
                error = row.pop("error")
                bar.update(1)
                if error:
                    record_skipped(stats, row["path"], error, bad_images)
                    continue
                row["detections"] = json.loads(row["detections"])
                yield row
    check_bad_fraction(stats, max_bad_fraction)


def class_names_of_model(model: Any, settings: EvaluateParams) -> dict[int, str]:
    """Label -> class name of ``model`` (a detector), or of a checkpoint's bytes, read in a Ray task on
    the cluster (Ray must be initialised) so that this process never imports torch."""
    if not isinstance(model, bytes):
        from pipeline.inference.loading import class_names_of

        return class_names_of(model)
    import ray

    from pipeline.evaluation.replica import checkpoint_class_names

    task = ray.remote(checkpoint_class_names).options(num_cpus=settings.decode_cpus)
    return {int(label): name for label, name in ray.get(task.remote(model)).items()}


def check_bad_fraction(stats: StreamStats, max_bad_fraction: float) -> None:
    """Raise :class:`BadImagesError` when more than ``max_bad_fraction`` of the images were skipped."""
    if len(stats.skipped) > max_bad_fraction * max(1, stats.images):
        raise BadImagesError(f"{len(stats.skipped)} of {stats.images} images could not be read (listed above), "
                             f"more than data.max_bad_fraction={max_bad_fraction}: fix or remove them, or raise "
                             "data.max_bad_fraction")


class _DropMessage(logging.Filter):
    """Drops log records whose message starts with ``prefix``: one exact message, nothing else."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


_PROGRESS_DISABLED = "Progress bars disabled. To enable, set `ray.data.DataContext"


def _quiet_own_progress_setting() -> None:
    """Ray Data warns "Progress bars disabled ..." when its bars are off. They are off because this
    module shows one bar of its own, in images (Ray Data's are per operator, in rows and blocks, and
    interleave with it): the warning reports our setting, not something about the user's run."""
    logger = logging.getLogger("ray.data._internal.progress")
    if not any(isinstance(f, _DropMessage) and f.prefix == _PROGRESS_DISABLED for f in logger.filters):
        logger.addFilter(_DropMessage(_PROGRESS_DISABLED))


def _replica_restarts() -> dict[str, Any]:
    """Ray Data restarts a crashed replica actor by default (``max_restarts=-1``). Its actors take
    their constructor arguments (Ray Data's own transformer and context) from the object store, which
    makes Ray's core worker log an error line for every replica (ray#53727) although Ray Data keeps
    those references alive for the whole run. On a one-node Ray (the local instance) a lost node is
    the driver's own, so a restart saves nothing there: no restarts, and no misleading error line. On
    a cluster of several nodes Ray Data's default stays: a replica on a lost node is started again."""
    import ray

    alive = [node for node in ray.nodes() if node.get("Alive")]
    return {"max_restarts": 0} if len(alive) <= 1 else {}


def _inference_dataset(items: Sequence[dict[str, Any]], model_ref: Any, settings: EvaluateParams,
                       resize: ResizeParams, exif_orientation: str = "apply") -> Any:
    """``items`` -> decode tasks -> detector actor pool, as a lazy Ray Dataset."""
    import ray

    dataset = ray.data.from_items(list(items))
    dataset = dataset.map_batches(decode_batch, batch_size=settings.batch_size, batch_format="numpy",
                                  num_cpus=settings.decode_cpus,
                                  fn_kwargs={"min_size": resize.min_size, "max_size": resize.max_size,
                                             "exif_orientation": exif_orientation})
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing actor options as extra keyword arguments ("ray_remote_args")
        # but names no parameter for max_restarts, the only option passed that way (Ray is pinned to
        # 2.60.x in pyproject.toml): the warning is about this call, not about the user's run.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return dataset.map_batches(
            DetectorReplica, batch_size=settings.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=settings.replicas[0], max_size=settings.replicas[1]),
            num_cpus=settings.cpus_per_replica, num_gpus=settings.gpus_per_replica,
            fn_constructor_kwargs={"model_ref": [model_ref], "device": settings.device,
                                   "num_threads": max(1, int(settings.cpus_per_replica)),
                                   "score_threshold": settings.score_threshold},
            **_replica_restarts())


def _rows(batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    keys = list(batch)
    for values in zip(*(batch[key] for key in keys)):
        yield {key: value.item() if hasattr(value, "item") else value for key, value in zip(keys, values)}


def record_skipped(stats: StreamStats, path: str, error: str, bad_images: str) -> None:
    """List an unreadable image (and log it); under ``fail``, raise :class:`BadImagesError` instead."""
    stats.skipped.append({"path": path, "error": error})
    if bad_images == "fail":
        raise BadImagesError(f"could not read {path}: {error} (data.bad_images=fail; `skip` lists such images "
                             "and goes on)")
    log.warning("skipped unreadable image %s: %s", path, error)


__all__ = ["BAD_IMAGE_POLICIES", "BadImagesError", "StreamStats", "check_bad_fraction", "check_policy", "class_names_of_model",
           "record_skipped",
           "stream_detections"]
