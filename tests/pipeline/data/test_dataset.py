"""CocoDetectionDataset and collate_detection (pipeline/data/dataset.py)."""

import json

import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.data.dataset import CocoDetectionDataset, collate_detection
from pipeline.data.transforms import build_transforms


@pytest.fixture
def prepared(tmp_path):
    from PIL import Image

    (tmp_path / "images" / "train").mkdir(parents=True)
    Image.new("RGB", (40, 20), (10, 20, 30)).save(tmp_path / "images/train/a.png")
    Image.new("RGB", (30, 30)).save(tmp_path / "images/train/b.png")
    coco = {"images": [{"id": 5, "file_name": "images/train/a.png", "width": 40, "height": 20},
                       {"id": 6, "file_name": "images/train/b.png", "width": 30, "height": 30}],
            "annotations": [{"id": 1, "image_id": 5, "category_id": 2, "bbox": [1, 2, 10, 5], "iscrowd": 0},
                            {"id": 2, "image_id": 5, "category_id": 1, "bbox": [0, 0, 4, 4], "iscrowd": 1}],
            "categories": [{"id": 2, "name": "dog"}, {"id": 1, "name": "cat"}]}
    (tmp_path / "train.json").write_text(json.dumps(coco))
    return tmp_path / "train.json"


def test_dataset_returns_the_documented_target(prepared):
    ds = CocoDetectionDataset(prepared)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.image_ids == [5, 6] and ds.coco_json_path == prepared and len(ds) == 2
    image, target = ds[0]
    assert image.shape == (3, 20, 40) and image.dtype == torch.float32
    assert image[:, 0, 0].tolist() == pytest.approx([10 / 255, 20 / 255, 30 / 255])
    assert target["boxes"].dtype == torch.float32 and target["boxes"].tolist() == [[1, 2, 11, 7], [0, 0, 4, 4]]
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [2, 1]
    assert target["iscrowd"].tolist() == [0, 1]
    assert target["image_id"] == 5 and target["orig_size"] == (20, 40) and target["size"] == (20, 40)
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_transforms_and_collate(prepared, tmp_path):
    ds = CocoDetectionDataset(str(prepared), images_dir=tmp_path,
                              transforms=build_transforms(train=False, min_size=40, max_size=100))
    image, target = ds[0]
    assert image.shape == (3, 40, 80) and target["size"] == (40, 80) and target["orig_size"] == (20, 40)
    assert target["boxes"][0].tolist() == [2, 4, 22, 14]
    images, targets = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate_detection)))
    assert [tuple(i.shape) for i in images] == [(3, 40, 80), (3, 40, 40)]
    assert [t["image_id"] for t in targets] == [5, 6]


def test_non_contiguous_categories_are_refused(prepared):
    coco = json.loads(prepared.read_text())
    coco["categories"][0]["id"] = 9
    prepared.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="category ids must be 1..C"):
        CocoDetectionDataset(prepared)
