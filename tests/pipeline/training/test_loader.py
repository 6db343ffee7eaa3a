"""The training DataLoader of a rank (pipeline/training/loader.py) on mixed-size COCO JPEGs."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from pipeline.training.loader import build_train_loader, resolve_loader_workers


def _prepared(mixed_coco) -> Path:
    """A prepared-style train.json (category ids 1..C) pointing at mixed portrait/landscape JPEGs."""
    ann = mixed_coco(num_images=12, category_ids=(1, 2))
    coco = json.loads(ann.read_text())
    for image in coco["images"]:
        image["file_name"] = f"images/{image['file_name']}"
    (ann.parent / "train.json").write_text(json.dumps(coco))
    return ann.parent / "train.json"


def _batches(loader, epochs=2):
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        out.append([(t["image_id"], img) for images, targets in loader.loader for img, t in zip(images, targets)])
    return out


def test_grouped_loader_one_orientation_per_batch_and_seeded_augmentation(mixed_coco, tiny_params):
    from pipeline.data.dataset import CocoDetectionDataset
    from pipeline.data.transforms import build_transforms

    train = tiny_params("train.batch_size=3", "train.augment.hflip_prob=0.5",
                        "train.augment.photometric_prob=0.5").train
    dataset = CocoDetectionDataset(_prepared(mixed_coco), transforms=build_transforms(
        True, 64, 96, train.augment.recipe()))
    cpu = torch.device("cpu")
    built = build_train_loader(dataset, train, rank=0, world=1, device=cpu)
    assert built.grouped and built.workers == 0 and not built.pin_memory  # auto on CPU: 0 workers, no pinning
    assert "portrait" in built.describe() and "landscape" in built.describe()
    built.sampler.set_epoch(0)
    for images, _ in built.loader:
        assert len({img.shape[1] > img.shape[2] for img in images}) == 1  # portrait and landscape never mixed

    epochs = _batches(built)
    assert sorted(i for i, _ in epochs[0]) == sorted(dataset.image_ids)
    first = dict(epochs[0])
    second = dict(epochs[1])
    assert any(not torch.equal(first[i], second[i]) for i in first)  # new augmentation every epoch
    with_workers = build_train_loader(dataset, dataclasses.replace(train, loader_workers=2),
                                      rank=0, world=1, device=cpu)
    assert with_workers.workers == 2
    again = _batches(with_workers)  # persistent worker processes: the same images, batches and pixels
    for ours, theirs in zip(epochs, again):
        assert [i for i, _ in ours] == [i for i, _ in theirs]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(ours, theirs))

    off = build_train_loader(dataset, dataclasses.replace(train, group_by_aspect_ratio=False),
                             rank=0, world=1, device=cpu)
    assert not off.grouped and "not grouped" in off.describe()


def test_auto_loader_workers():
    assert resolve_loader_workers("auto", torch.device("cpu")) == 0
    assert resolve_loader_workers(3, torch.device("cpu")) == 3
    cuda = resolve_loader_workers("auto", torch.device("cuda"), local_world_size=1)
    assert 1 <= cuda <= 8
    assert resolve_loader_workers("auto", torch.device("cuda"), local_world_size=10_000) == 1


@pytest.mark.parametrize("value, ok", [("auto", True), (0, True), (4, True), (-1, False), ("many", False)])
def test_loader_workers_param(tiny_params, value, ok):
    from pipeline.params import ParamsError

    if ok:
        assert tiny_params(f"train.loader_workers={value}").train.loader_workers == value
    else:
        with pytest.raises(ParamsError, match="train.loader_workers"):
            tiny_params(f"train.loader_workers={value}")
