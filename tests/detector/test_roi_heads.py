import torch

from detector.model import build_model
from detector.structures import Targets


def _setup(tiny, gen):
    heads = build_model(tiny(fpn_channels=8)).roi_heads
    feats = [torch.randn(2, 8, 128 // s, 128 // s, generator=gen) for s in (8, 16, 32)]
    xy = torch.rand(2, 30, 2, generator=gen) * 80
    proposals = torch.cat([xy, xy + 10 + torch.rand(2, 30, 2, generator=gen) * 40], dim=-1)
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1, 20:] = False
    return heads, feats, proposals, valid


def test_losses_finite_with_and_without_gt(tiny, gen):
    heads, feats, proposals, valid = _setup(tiny, gen)
    heads.train()
    targets = Targets(
        boxes=torch.tensor([[[10.0, 10, 50, 60]], [[0, 0, 0, 0]]]),
        labels=torch.tensor([[2], [0]]),
        valid=torch.tensor([[True], [False]]),
    )
    _, losses = heads(feats, proposals, valid, torch.tensor([[128, 128]] * 2), targets, gen)
    assert set(losses) == {"loss_cls", "loss_box"} and all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box"] > 0  # the GT box itself is a foreground RoI
    empty = Targets(
        torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0, dtype=torch.bool)
    )
    _, losses = heads(feats, proposals, valid, torch.tensor([[128, 128]] * 2), empty, gen)
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_box"] == 0
    # no proposals and no GT at all: zero losses, not NaN
    _, losses = heads(feats, proposals[:, :0], valid[:, :0], torch.tensor([[128, 128]] * 2), empty, gen)
    assert all(v == 0 for v in losses.values())


def test_detections_format(tiny, gen):
    heads, feats, proposals, valid = _setup(tiny, gen)
    heads.eval()
    heads.score_threshold = 0.0
    heads.detections_per_image = 7
    sizes = torch.tensor([[100, 128], [128, 90]])
    dets, losses = heads(feats, proposals, valid, sizes)
    assert losses == {} and len(dets) == 2
    for b, d in enumerate(dets):
        assert set(d) == {"boxes", "scores", "labels"}
        n = d["boxes"].shape[0]
        assert 0 < n <= 7 and d["scores"].shape == (n,) and d["labels"].dtype == torch.int64
        assert ((d["labels"] >= 1) & (d["labels"] <= 2)).all()
        assert torch.all(d["scores"][1:] <= d["scores"][:-1])
        assert (d["boxes"][:, 2] <= sizes[b, 1]).all() and (d["boxes"][:, 3] <= sizes[b, 0]).all()
