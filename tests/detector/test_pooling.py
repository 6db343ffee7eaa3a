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


@pytest.mark.parametrize("sampling_ratio, output_size", [(2, 7), (1, 5), (3, 4)])
def test_equals_torchvision_roi_align(gen, sampling_ratio, output_size):
    levels = [3, 4, 5, 6]
    pooler = MultiLevelRoIAlign(levels, output_size, sampling_ratio)
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


def test_per_image_extent_equals_own_map(gen):
    """In a padded batch, an image's RoIs sample as if its own (smaller) maps were alone."""
    pooler = MultiLevelRoIAlign([3, 4, 5], 7, 2)
    feats = [torch.randn(2, 4, 256 // s, 320 // s, generator=gen) for s in (8, 16, 32)]
    padded_sizes = torch.tensor([[256, 320], [128, 192]])
    boxes = _random_rois(40, 150, gen)
    batch_idx = torch.ones(40, dtype=torch.int64)
    out = pooler(feats, boxes, batch_idx, padded_sizes)
    own = [f[1:, :, : 128 // s, : 192 // s] for f, s in zip(feats, (8, 16, 32))]
    alone = pooler(own, boxes, torch.zeros(40, dtype=torch.int64))
    torch.testing.assert_close(out, alone)


def test_gradients_match_torchvision(gen):
    pooler = MultiLevelRoIAlign([3], 7, 2)
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


def test_no_rois(gen):
    pooler = MultiLevelRoIAlign([3, 4, 5], 7, 2)
    feats = [torch.randn(1, 4, 8 // 2 ** (lv - 3), 8 // 2 ** (lv - 3), generator=gen) for lv in (3, 4, 5)]
    assert pooler(feats, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)).shape == (0, 4, 7, 7)
