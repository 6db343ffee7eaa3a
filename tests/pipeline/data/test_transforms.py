"""The v2 recipe keeps boxes consistent with pixels (pipeline/data/transforms.py)."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.transforms import Augment, ResizeJitter, build_transforms, resized_size, to_tensor

COLOURS = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}  # label -> the colour of its filled box


def _coloured(w=120, h=80):
    """A black image with three filled boxes of distinct colours (square, tall, wide) and their target."""
    boxes = [[10, 10, 40, 40], [60, 5, 75, 70], [80, 50, 115, 62]]
    pixels = np.zeros((h, w, 3), np.uint8)
    for label, (x0, y0, x1, y1) in zip(COLOURS, boxes):
        pixels[y0:y1, x0:x1] = COLOURS[label]
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([1, 2, 3]),
              "iscrowd": torch.tensor([0, 1, 0]), "image_id": 7, "orig_size": (h, w), "size": (h, w)}
    return Image.fromarray(pixels), target


def _colour_extent(image, label):
    """xyxy extent of the pixels whose colour is closest to ``label``'s, or None if none is left."""
    channel = list(COLOURS[label]).index(255)
    mask = (image[channel] > 0.5) & (image.sum(0) - image[channel] < 0.5)  # (H, W)
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        return None
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


RECIPES = {
    "hflip": Augment(hflip_prob=1.0),
    "vflip": Augment(hflip_prob=0.0, vflip_prob=1.0),
    "scale_jitter": Augment(scale_jitter=(0.5, 1.5)),
    "zoom_out": Augment(zoom_out_prob=1.0, zoom_out_max=2.0),
    "iou_crop": Augment(iou_crop_prob=1.0),
    "all": Augment(scale_jitter=(0.7, 1.3), iou_crop_prob=0.5, zoom_out_prob=0.5, hflip_prob=0.5, vflip_prob=0.5),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
@pytest.mark.parametrize("as_tensor", [False, True])
def test_each_transform_moves_boxes_with_their_pixels(name, as_tensor):
    transforms = build_transforms(True, 80, 120, RECIPES[name])
    image, target = _coloured()
    if as_tensor:  # the uint8 (3, H, W) tensor a decoder may hand over
        image = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
    for seed in range(8):
        torch.manual_seed(seed)
        out, t = transforms(image, target)
        assert out.dtype == torch.float32 and out.shape[0] == 3 and t["size"] == tuple(out.shape[-2:])
        assert t["boxes"].dtype == torch.float32 and type(t["boxes"]) is torch.Tensor
        assert len(t["boxes"]) == len(t["labels"]) == len(t["iscrowd"]) == 3 - t["degenerate_boxes"]
        if name not in ("iou_crop", "all"):  # only crops drop boxes here (those whose centre left the patch)
            assert t["degenerate_boxes"] == 0
        for box, label, crowd in zip(t["boxes"].tolist(), t["labels"].tolist(), t["iscrowd"].tolist()):
            assert crowd == (label == 2)  # iscrowd stayed aligned with its box
            extent = _colour_extent(out, label)
            assert extent is not None, f"{name} seed {seed}: box of label {label} kept but its pixels are gone"
            assert box == pytest.approx(extent, abs=1.6), f"{name} seed {seed}: label {label}"
        assert (t["image_id"], t["orig_size"]) == (7, (80, 120))


def test_flips_mirror_boxes_exactly():
    image, target = _coloured()
    _, t = build_transforms(True, 80, 120, Augment(hflip_prob=1.0))(image, target)
    assert t["boxes"][0].tolist() == [80.0, 10.0, 110.0, 40.0]  # x0' = W - x1
    _, t = build_transforms(True, 80, 120, Augment(hflip_prob=0.0, vflip_prob=1.0))(image, target)
    assert t["boxes"][0].tolist() == [10.0, 40.0, 40.0, 70.0]  # y0' = H - y1


def test_degenerate_boxes_are_removed_counted_and_their_labels_with_them():
    image, target = _coloured()
    target["boxes"] = torch.tensor([[10, 10, 40, 40], [60, 5, 60.5, 70], [80, 50, 115, 62]], dtype=torch.float32)
    _, t = build_transforms(True, 80, 120, Augment(hflip_prob=0.0))(image, dict(target, degenerate_boxes=2))
    assert t["boxes"].tolist() == [[10, 10, 40, 40], [80, 50, 115, 62]]
    assert t["labels"].tolist() == [1, 3] and t["iscrowd"].tolist() == [0, 0]
    assert t["degenerate_boxes"] == 3  # adds to the count already in the target
    # a box that a downscale leaves under a pixel is removed too
    target["boxes"] = torch.tensor([[10, 10, 40, 40], [60, 5, 62, 70]], dtype=torch.float32)
    target["labels"], target["iscrowd"] = torch.tensor([1, 2]), torch.tensor([0, 1])
    _, t = build_transforms(True, 20, 30, Augment(hflip_prob=0.0))(image, target)
    assert t["size"] == (20, 30) and t["labels"].tolist() == [1] and t["degenerate_boxes"] == 1


def test_recipe_follows_the_torch_seed():
    transforms = build_transforms(True, 80, 120, Augment(scale_jitter=(0.5, 1.5), iou_crop_prob=0.5,
                                                         zoom_out_prob=0.5, photometric_prob=0.5, vflip_prob=0.5))
    image, target = _coloured()
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append([transforms(image, target) for _ in range(6)])
    for (ia, ta), (ib, tb) in zip(*runs):
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])
        assert 0.0 <= ia.min() and ia.max() <= 1.0
    assert len({tuple(t["size"]) for _, t in runs[0]}) > 1  # the jitter did change the scale


def test_image_without_boxes_passes_the_iou_crop():
    image, target = _coloured()
    empty = dict(target, boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
                 iscrowd=torch.zeros(0, dtype=torch.int64))
    out, t = build_transforms(True, 80, 120, Augment(iou_crop_prob=1.0))(image, empty)
    assert t["boxes"].shape == (0, 4) and t["degenerate_boxes"] == 0 and out.shape == (3, 80, 120)


@pytest.mark.parametrize("size", [(20, 40), (37, 23)])
def test_eval_path_is_the_old_deterministic_resize(size):
    h, w = size
    rng = np.random.default_rng(0)
    pil = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    transforms = build_transforms(False, 30, 50)
    assert [type(t).__name__ for t in transforms.transforms] == ["ResizeJitter", "ToImage", "ToDtype"]
    out, t = transforms(pil, {"boxes": torch.tensor([[2.0, 4.0, 10.0, 16.0]])})
    new_h, new_w = resized_size(h, w, 30, 50)
    # the seed's resize: PIL bilinear on the image, boxes scaled by the size ratio
    expected = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR), np.float32).transpose(2, 0, 1) / 255
    assert torch.allclose(out, torch.from_numpy(np.ascontiguousarray(expected)), rtol=0, atol=1e-6)  # same pixels
    scale = torch.tensor([new_w / w, new_h / h] * 2)
    assert torch.allclose(t["boxes"], torch.tensor([[2.0, 4.0, 10.0, 16.0]]) * scale) and t["size"] == (new_h, new_w)
    torch.manual_seed(0)
    assert torch.equal(transforms(pil, {"boxes": torch.zeros(0, 4)})[0], out)  # no randomness


def test_uint8_tensor_and_pil_inputs_agree():
    image, target = _coloured()
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
    transforms = build_transforms(True, 80, 120, Augment(hflip_prob=1.0))
    a, ta = transforms(image, target)
    b, tb = transforms(tensor, target)
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    assert torch.equal(to_tensor(tensor), to_tensor(image))


def test_resized_size_rule():
    assert resized_size(480, 640, 800, 1333) == (800, 1067)
    assert resized_size(100, 1000, 800, 1333) == (133, 1333)
    assert resized_size(256, 256, 256, 256) == (256, 256)
    assert ResizeJitter(256, 256).make_params([torch.zeros(3, 100, 50)])["size"] == [256, 128]
    with pytest.raises(ValueError, match="scale_range"):
        ResizeJitter(10, 20, (1.5, 1.0))
