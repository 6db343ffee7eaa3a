"""The worker side of batch inference on Ray Data: decoding tasks and the detector replica (an actor).

Batches are Ray Data's numpy format, ``{column: np.ndarray}``, one row per image:

- input rows: ``id`` (int64), ``path`` (str);
- after :func:`decode_batch`: plus ``image`` (the resized image, ``(h, w, 3)`` uint8, a ragged column;
  ``(0, 0, 3)`` for an unreadable file), ``height``/``width`` (the original size), ``error`` (``""`` or
  ``"<ExceptionType>: <message>"``) and ``decode_node`` (the Ray node id of the task);
- after :class:`DetectorReplica`: ``image`` dropped, plus ``detections`` (the image's COCO results as a
  JSON string: ``[{"image_id", "category_id", "bbox": [x, y, w, h] in original pixels, "score"}]``),
  ``forward_s`` (this image's share of its batch's forward time) and ``replica_node`` (node id).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from pipeline.data.decode import ExifOrientation, decode_or_none

EMPTY_IMAGE = np.zeros((0, 0, 3), dtype=np.uint8)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def decode_batch(batch: dict[str, np.ndarray], *, min_size: int, max_size: int,
                 exif_orientation: ExifOrientation = "apply") -> dict[str, np.ndarray]:
    """Decode (:func:`pipeline.data.decode.decode_image`, the decode of every stage) and resize each
    ``path`` (the evaluation resize, as in training); failures become ``error``.

    Optional ``ann_width``/``ann_height`` columns (an annotated split) pick the EXIF frame as training
    does. An unreadable file is kept as a row with its ``error`` so that the driver lists it; it is
    never dropped here.
    """
    from pipeline.data.transforms import ResizeJitter  # torch: in the task, never in the driver

    resize = ResizeJitter(min_size, max_size)  # the evaluation transforms' resize (scale range (1, 1))
    images, heights, widths, errors = [], [], [], []
    annotated = batch.get("ann_width"), batch.get("ann_height")
    for i, path in enumerate(batch["path"]):
        size = (int(annotated[0][i]), int(annotated[1][i])) if annotated[0] is not None else None
        image, error = decode_or_none(path, exif_orientation_setting=exif_orientation, annotated_size=size)
        if image is None:
            images.append(EMPTY_IMAGE)
            heights.append(0)
            widths.append(0)
            errors.append(error)
            continue
        heights.append(image.height)
        widths.append(image.width)
        resized = resize(image)
        images.append(np.asarray(resized, dtype=np.uint8))  # (h, w, 3)
        errors.append("")
    ragged = np.empty(len(images), dtype=object)
    ragged[:] = images
    node = _node_id()
    return {**batch, "image": ragged, "height": np.asarray(heights, dtype=np.int64),
            "width": np.asarray(widths, dtype=np.int64), "error": np.asarray(errors, dtype=object),
            "decode_node": np.asarray([node] * len(images), dtype=object)}


def to_tensor(pixels: np.ndarray):
    """``(h, w, 3)`` uint8 -> ``(3, h, w)`` float32 in [0, 1]: the conversion of the evaluation transforms
    (:func:`pipeline.data.transforms.to_tensor`), so the pixels are bit for bit the same."""
    from pipeline.data.transforms import to_tensor as image_to_tensor

    return image_to_tensor(np.array(pixels))  # a writable copy: Ray hands out read-only arrays


class DetectorReplica:
    """One detector per actor: built once from the model in Ray's object store, then fed batches.

    Args:
        model_ref: ``[ObjectRef]`` of the detector, or of its checkpoint's bytes
            (:func:`pipeline.inference.loading.checkpoint_bytes`: a driver that never imports torch),
            ``ray.put`` once by the driver; a list so that Ray hands the reference itself to the constructor.
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when this replica sees a GPU).
        num_threads: torch CPU threads of this replica (its CPUs).
        score_threshold: detections below it are not returned.
    """

    def __init__(self, model_ref: list[Any], *, device: str, num_threads: int, score_threshold: float) -> None:
        import ray
        import torch

        from pipeline.inference.loading import model_from_bytes, resolve_device

        torch.set_num_threads(max(1, num_threads))
        self.device = resolve_device(device)
        model = ray.get(model_ref[0])
        self.model = (model_from_bytes(model, self.device) if isinstance(model, bytes)
                      else model.to(self.device).eval())
        self.score_threshold = score_threshold
        self.node = _node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from pipeline.evaluation.inference import to_coco_results

        ok = [i for i, error in enumerate(batch["error"]) if not error]
        tensors = [to_tensor(batch["image"][i]).to(self.device) for i in ok]
        outputs: list[dict[str, Any]] = []
        start = time.perf_counter()
        if tensors:
            with torch.inference_mode():
                outputs = self.model(tensors)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        share = (time.perf_counter() - start) / max(1, len(tensors))
        detections = ["[]"] * len(batch["id"])
        for i, tensor, output in zip(ok, tensors, outputs):
            dets = to_coco_results(output, int(batch["id"][i]), input_hw=tensor.shape[-2:],
                                   orig_hw=(int(batch["height"][i]), int(batch["width"][i])),
                                   score_threshold=self.score_threshold)
            detections[i] = json.dumps(dets)
        rows = {key: value for key, value in batch.items() if key != "image"}
        forward = np.asarray([share if not error else 0.0 for error in batch["error"]], dtype=np.float64)
        return {**rows, "detections": np.asarray(detections, dtype=object), "forward_s": forward,
                "replica_node": np.asarray([self.node] * len(detections), dtype=object)}


def checkpoint_class_names(checkpoint: bytes) -> dict[int, str]:
    """Label -> class name of the checkpoint (:func:`pipeline.inference.loading.class_names_of`); run in a
    Ray task, so that a driver holding only the checkpoint's bytes never imports torch."""
    from pipeline.inference.loading import class_names_of, model_from_bytes

    return class_names_of(model_from_bytes(checkpoint))
