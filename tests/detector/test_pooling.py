import pytest
import torch
from torchvision.ops import roi_align

from detector.pooling import MultiLevelRoIAlign


def test_level_assignment():
    pooler = MultiLevelRoIAlign([3, 4, 5], 7, 2)
    boxes = torch.tensor(
        [[0.0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 448, 448], [0, 0, 8, 8], [0, 0, 2000, 2000]]
    )
    assert pooler.assign_levels(boxes).tolist() == [4, 3, 5, 3, 5]
    assert MultiLevelRoIAlign([3, 4, 5, 6], 7, 2).pooled_levels == [3, 4, 5]
    with pytest.raises(ValueError, match="sampling_ratio"):
        MultiLevelRoIAlign([3, 4, 5], 7, 0)


def _random_rois(n, size, gen):
    """Boxes of all sizes, some crossing the image border."""
    xy = torch.rand(n, 2, generator=gen) * size * 1.1 - size * 0.05
    wh = torch.rand(n, 2, generator=gen) ** 2 * size + 0.5
    return torch.cat([xy, xy + wh], 1)


@pytest.mark.parametrize("backend", ["rows", "torchvision"])
@pytest.mark.parametrize("sampling_ratio, output_size", [(2, 7), (1, 5), (3, 4)])
def test_equals_torchvision_roi_align(gen, sampling_ratio, output_size, backend):
    levels = [3, 4, 5, 6]
    pooler = MultiLevelRoIAlign(levels, output_size, sampling_ratio, backend=backend)
    feats = [torch.randn(2, 6, 192 // 2**lv, 256 // 2**lv, generator=gen) for lv in levels]
    boxes = _random_rois(60, 200, gen)
    batch_idx = torch.randint(0, 2, (60,), generator=gen)
    out = pooler(feats, boxes, batch_idx)
    assert out.shape == (60, 6, output_size, output_size)
    rois = torch.cat([batch_idx[:, None].float(), boxes], 1)
    for r, level in enumerate(pooler.assign_levels(boxes).tolist()):
        ref = roi_align(
            feats[levels.index(level)], rois[r : r + 1], output_size, 2.0**-level, sampling_ratio, True
        )
        torch.testing.assert_close(out[r], ref[0], atol=1e-5, rtol=1e-4)


def test_channels_last_features_are_read_in_place(gen):
    """The rows backend reads channels-last maps as they are (the model's layout)."""
    pooler = MultiLevelRoIAlign([3, 4], 7, 2, backend="rows")
    feats = [torch.randn(2, 6, 24, 32, generator=gen), torch.randn(2, 6, 12, 16, generator=gen)]
    boxes = _random_rois(20, 180, gen)
    batch_idx = torch.randint(0, 2, (20,), generator=gen)
    cl = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    torch.testing.assert_close(pooler(cl, boxes, batch_idx), pooler(feats, boxes, batch_idx))


@pytest.mark.parametrize("backend", ["rows", "torchvision"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_keeps_the_geometry(gen, backend, dtype):
    """Under autocast, half-precision features at COCO map sizes pool within 1% of the same
    features pooled in float32: positions and weights are float32, not the features' dtype."""
    levels = [2, 3, 4, 5]
    pooler = MultiLevelRoIAlign(levels, 7, 2, backend=backend)
    feats = [torch.randn(1, 8, 800 // 2**lv, 1344 // 2**lv, generator=gen).to(dtype) for lv in levels]
    boxes = _random_rois(200, 780, gen)
    boxes[:, 0::2] += 500  # far from the origin: bfloat16 coordinates would be off by up to 4 px
    batch_idx = torch.zeros(200, dtype=torch.int64)
    with torch.autocast("cpu", dtype=dtype):
        out = pooler(feats, boxes, batch_idx)
    assert out.dtype == dtype
    ref = pooler([f.float() for f in feats], boxes, batch_idx)
    err = ((out.float() - ref).abs().mean() / ref.abs().mean()).item()
    assert err < 0.01, f"mean relative error {err:.4f}"


@pytest.mark.parametrize("backend", ["rows", "torchvision"])
def test_gradients_match_torchvision(gen, backend):
    pooler = MultiLevelRoIAlign([3], 7, 2, backend=backend)
    feat = torch.randn(2, 5, 16, 20, generator=gen, requires_grad=True)
    boxes = _random_rois(30, 120, gen)
    batch_idx = torch.randint(0, 2, (30,), generator=gen)
    weights = torch.randn(30, 5, 7, 7, generator=gen)
    (pooler([feat], boxes, batch_idx) * weights).sum().backward()
    ours = feat.grad.clone()
    feat.grad = None
    rois = torch.cat([batch_idx[:, None].float(), boxes], 1)
    (roi_align(feat, rois, 7, 1 / 8, 2, True) * weights).sum().backward()
    torch.testing.assert_close(ours, feat.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["rows", "torchvision"])
def test_no_rois(gen, backend):
    pooler = MultiLevelRoIAlign([3, 4, 5], 7, 2, backend=backend)
    feats = [torch.randn(1, 4, 8 // 2 ** (lv - 3), 8 // 2 ** (lv - 3), generator=gen) for lv in (3, 4, 5)]
    assert pooler(feats, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)).shape == (0, 4, 7, 7)
