"""Hand-built COCO ground truth and a fake detector for the evaluation tests."""

import json

import pytest
import torch
from torch import nn

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]


def coco_gt(boxes_per_image: dict[int, list[tuple[int, list[float]]]], size: tuple[int, int] = (200, 300)) -> dict:
    """A COCO ground-truth dict: ``{image_id: [(category_id, [x, y, w, h]), ...]}``, images ``(h, w)``."""
    h, w = size
    images = [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i in boxes_per_image]
    anns = []
    for image_id, objects in boxes_per_image.items():
        for cat, box in objects:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


@pytest.fixture
def write_gt(tmp_path):
    """Write :func:`coco_gt` to a json file and return its path."""
    def write(boxes_per_image, **kwargs):
        path = tmp_path / "gt.json"
        path.write_text(json.dumps(coco_gt(boxes_per_image, **kwargs)))
        return path
    return write


class FakeDetector(nn.Module):
    """Returns fixed detections per image; the image id is read from pixel ``[0, 0, 0]`` (id / 1000).

    ``outputs[image_id] = (boxes xyxy in the input pixels, scores, labels)``. Records the input sizes.
    """

    def __init__(self, outputs: dict[int, tuple[list, list, list]]):
        super().__init__()
        self.outputs = outputs
        self.seen_sizes: list[tuple[int, int]] = []
        self.seen_modes: list[bool] = []
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, images):
        results = []
        for image in images:
            self.seen_sizes.append(tuple(image.shape[-2:]))
            self.seen_modes.append(self.training)
            image_id = round(float(image[0, 0, 0]) * 1000)
            boxes, scores, labels = self.outputs.get(image_id, ([], [], []))
            results.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                            "scores": torch.tensor(scores, dtype=torch.float32),
                            "labels": torch.tensor(labels, dtype=torch.int64)})
        return results


class FakeDataset(torch.utils.data.Dataset):
    """Items ``(image (3, h, w), target)`` with the image id encoded for :class:`FakeDetector`."""

    def __init__(self, image_ids, input_hw=(100, 150), orig_hw=(200, 300), coco_json_path=None):
        self.image_ids = list(image_ids)
        self.input_hw, self.orig_hw = input_hw, orig_hw
        self.coco_json_path = coco_json_path

    def __len__(self):
        return len(self.image_ids)

    def __getitem__(self, i):
        image = torch.zeros(3, *self.input_hw)
        image[0, 0, 0] = self.image_ids[i] / 1000
        return image, {"image_id": torch.tensor(self.image_ids[i]), "orig_size": torch.tensor(self.orig_hw),
                       "size": torch.tensor(self.input_hw)}


def xywh_to_xyxy(box, scale=1.0):
    x, y, w, h = box
    return [x * scale, y * scale, (x + w) * scale, (y + h) * scale]


@pytest.fixture
def fake_detector():
    """The :class:`FakeDetector` class (test modules are not importable packages)."""
    return FakeDetector


@pytest.fixture
def fake_dataset():
    """The :class:`FakeDataset` class."""
    return FakeDataset
