import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detector.anchors import AnchorGenerator, cell_anchors, grid_centers


def test_grid_centers_row_major():
    c = grid_centers(2, 3, 8)
    expected = torch.tensor([[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]], dtype=torch.float32)
    torch.testing.assert_close(c, expected)


@pytest.mark.parametrize("ratio", [0.5, 1.0, 2.0])
def test_cell_anchor_area_and_ratio(ratio):
    (a,) = cell_anchors(16, [8.0], [ratio])
    w, h = (a[2] - a[0]).item(), (a[3] - a[1]).item()
    assert math.isclose(w * h, (16 * 8) ** 2, rel_tol=1e-5)
    assert math.isclose(h / w, ratio, rel_tol=1e-5)  # aspect_ratio = height / width
    assert math.isclose(a[0] + a[2], 0.0, abs_tol=1e-4) and math.isclose(a[1] + a[3], 0.0, abs_tol=1e-4)


def test_seed_shapes():
    """The seed's example: 224x224 input, p3/p4/p5 -> 28/14/7, 2352/588/147 anchors with 3 ratios."""
    gen = AnchorGenerator(strides=[8, 16, 32], scales=[8], aspect_ratios=[0.5, 1.0, 2.0])
    shapes = [(224 // s, 224 // s) for s in (8, 16, 32)]
    assert shapes == [(28, 28), (14, 14), (7, 7)]
    anchors = gen(shapes)
    assert [a.shape for a in anchors] == [(2352, 4), (588, 4), (147, 4)]
    assert gen.num_anchors_per_location == 3


@pytest.mark.parametrize("scales", [[8.0], [4.0, 8.0]])
def test_matches_torchvision_anchor_generator(scales):
    strides = [8, 16, 32]
    ratios = [0.5, 1.0, 2.0]
    ours = AnchorGenerator(strides, scales, ratios)
    tv = TVAnchorGenerator(
        sizes=tuple(tuple(s * stride for s in scales) for stride in strides),
        aspect_ratios=(tuple(ratios),) * len(strides),
    )
    images = ImageList(torch.zeros(1, 3, 96, 128), [(96, 128)])
    feats = [torch.zeros(1, 4, 96 // s, 128 // s) for s in strides]
    (tv_anchors,) = tv(images, feats)
    our_anchors = torch.cat(ours([f.shape[-2:] for f in feats]))
    # torchvision puts anchors on the cell's top-left corner and rounds the cell anchors
    offsets = torch.cat(
        [
            torch.full((f.shape[-2] * f.shape[-1] * ours.num_anchors_per_location, 1), s / 2)
            for f, s in zip(feats, strides)
        ]
    )
    assert our_anchors.shape == tv_anchors.shape
    torch.testing.assert_close(our_anchors - offsets, tv_anchors, atol=0.5, rtol=0)


def test_per_level_scales_and_cache():
    gen = AnchorGenerator([8, 16], [[2.0, 4.0], [8.0, 16.0]], [1.0])
    a1 = gen([(4, 4), (2, 2)])
    a2 = gen([(4, 4), (2, 2)])
    assert a1[0] is a2[0] and a1[1] is a2[1]  # cached
    assert a1[0].shape == (4 * 4 * 2, 4)
    widths = a1[1][:2, 2] - a1[1][:2, 0]
    torch.testing.assert_close(widths, torch.tensor([128.0, 256.0]))
    assert gen([(4, 4), (2, 2)], dtype=torch.float64)[0].dtype == torch.float64


@pytest.mark.parametrize(
    "scales, ratios",
    [
        ([], [1.0]),
        ([8.0], []),
        ([0.0], [1.0]),
        ([8.0], [-1.0]),
        ([[1.0], [1.0, 2.0]], [1.0]),
        ([[1.0]], [1.0]),
    ],
)
def test_bad_arguments(scales, ratios):
    with pytest.raises(ValueError):
        AnchorGenerator([8, 16], scales, ratios)
