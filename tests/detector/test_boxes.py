import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.ops import box_iou as tv_box_iou
from torchvision.ops import clip_boxes_to_image
from torchvision.ops import remove_small_boxes as tv_remove_small_boxes

from detector.boxes import BoxCoder, box_area, box_iou, clip_boxes, remove_small_boxes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_matches_torchvision(make_boxes, gen, dtype):
    a, b = make_boxes(50, generator=gen, dtype=dtype), make_boxes(30, generator=gen, dtype=dtype)
    ours = box_iou(a, b)
    assert ours.shape == (50, 30) and ours.dtype == dtype
    torch.testing.assert_close(ours, tv_box_iou(a, b))


def test_box_iou_batched_equals_per_image(make_boxes, gen):
    a = torch.stack([make_boxes(20, generator=gen) for _ in range(3)])  # (3, 20, 4)
    b = torch.stack([make_boxes(7, generator=gen) for _ in range(3)])  # (3, 7, 4)
    ours = box_iou(a, b)
    assert ours.shape == (3, 20, 7)
    for i in range(3):
        torch.testing.assert_close(ours[i], tv_box_iou(a[i], b[i]))


def test_box_iou_hand_computed_and_empty():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1 / 7, 0.0, 0.0]]))
    # zero-area vs zero-area gives 0, not NaN
    z = torch.zeros(1, 4)
    assert box_iou(z, z).item() == 0.0
    assert box_iou(a, torch.zeros(0, 4)).shape == (1, 0)


def test_box_area(make_boxes, gen):
    boxes = make_boxes(10, generator=gen)
    torch.testing.assert_close(box_area(boxes), (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_matches_torchvision(make_boxes, gen, weights):
    ref, tgt = make_boxes(64, generator=gen), make_boxes(64, generator=gen)
    ours, theirs = BoxCoder(weights), TVBoxCoder(weights)
    deltas = ours.encode(ref, tgt)
    torch.testing.assert_close(deltas, theirs.encode_single(tgt, ref))
    pred = torch.randn(64, 4, generator=gen)
    torch.testing.assert_close(ours.decode(pred, ref), theirs.decode_single(pred, ref))


def test_box_coder_round_trip_batched(make_boxes, gen):
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    ref = torch.stack([make_boxes(16, generator=gen) for _ in range(2)])  # (2, 16, 4)
    tgt = torch.stack([make_boxes(16, generator=gen) for _ in range(2)])
    deltas = coder.encode(ref, tgt)
    assert deltas.shape == (2, 16, 4)
    torch.testing.assert_close(coder.decode(deltas, ref), tgt, rtol=1e-4, atol=1e-3)


def test_box_coder_decode_float32_and_clamp():
    coder = BoxCoder()
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]], dtype=torch.float16)
    deltas = torch.tensor([[0.0, 0.0, 100.0, 100.0]], dtype=torch.float16)
    out = coder.decode(deltas, ref)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # dw clamped at log(1000/16): width becomes 16 * 1000/16 = 1000
    torch.testing.assert_close(out[0, 2] - out[0, 0], torch.tensor(1000.0))
    assert math.isclose(coder.scale_clamp, math.log(1000 / 16))


def test_clip_boxes_matches_torchvision(make_boxes, gen):
    boxes = make_boxes(40, size=150, generator=gen) - 20
    torch.testing.assert_close(clip_boxes(boxes, (90, 110)), clip_boxes_to_image(boxes, (90, 110)))


def test_clip_boxes_per_image_sizes(make_boxes, gen):
    boxes = torch.stack([make_boxes(10, size=150, generator=gen) - 20 for _ in range(2)])  # (2, 10, 4)
    sizes = torch.tensor([[50, 60], [120, 80]])  # (h, w) per image
    out = clip_boxes(boxes, sizes)
    for i in range(2):
        torch.testing.assert_close(out[i], clip_boxes_to_image(boxes[i], tuple(sizes[i].tolist())))


def test_remove_small_boxes_matches_torchvision(make_boxes, gen):
    boxes = make_boxes(50, size=20, generator=gen)
    keep = remove_small_boxes(boxes, 4.0)
    assert keep.dtype == torch.bool
    torch.testing.assert_close(keep.nonzero().squeeze(1), tv_remove_small_boxes(boxes, 4.0))
