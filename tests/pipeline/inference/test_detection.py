"""Detections for PIL images: boxes back in each image's original pixels, whatever the batch."""

import pytest
import torch
from PIL import Image

from pipeline.data.transforms import build_transforms
from pipeline.inference.detection import detect, rescale_boxes


def test_rescale_boxes_maps_input_pixels_to_original():
    boxes = torch.tensor([[10.0, 10.0, 20.0, 30.0]])
    out = rescale_boxes(boxes, from_hw=(50, 100), to_hw=(100, 300))  # y x2, x x3
    assert out.tolist() == [[30.0, 20.0, 60.0, 60.0]]
    assert rescale_boxes(out, (100, 300), (50, 100)).tolist() == boxes.tolist()


class _BoxAtQuarter(torch.nn.Module):
    """One detection per image: the box from a quarter to three quarters of the input it sees."""

    def forward(self, images):
        out = []
        for image in images:
            h, w = image.shape[-2:]
            out.append({"boxes": torch.tensor([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]]),
                        "scores": torch.tensor([0.9]), "labels": torch.tensor([1])})
        return out


def test_detect_returns_boxes_in_original_pixels_alone_or_in_a_batch():
    images = [Image.new("RGB", (120, 80)), Image.new("RGB", (40, 100))]
    transforms = build_transforms(False, 40, 60)  # 120x80 is seen at 60x40, 40x100 at 24x60
    batch = detect(_BoxAtQuarter(), images, transforms=transforms)
    alone = [detect(_BoxAtQuarter(), [image], transforms=transforms)[0] for image in images]
    for image, found, single in zip(images, batch, alone):
        w, h = image.size
        torch.testing.assert_close(found["boxes"], torch.tensor([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]]))
        torch.testing.assert_close(found["boxes"], single["boxes"])
        assert found["labels"].tolist() == [1] and found["scores"].tolist() == pytest.approx([0.9])
