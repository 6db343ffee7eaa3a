import torch

from detector.model import build_model
from detector.rpn import RPNHead
from detector.structures import Targets


def _features(B=2, C=8, sizes=((16, 16), (8, 8), (4, 4)), gen=None):
    return [torch.randn(B, C, h, w, generator=gen) for h, w in sizes]


def test_head_layout_matches_anchor_order(gen):
    """Logit n of level l belongs to location n // A and anchor n % A."""
    head = RPNHead(8, [8], num_anchors=3)
    feats = _features(gen=gen)
    logits, deltas = head(feats)
    assert [t.shape for t in logits] == [(2, 768), (2, 192), (2, 48)]
    assert [t.shape for t in deltas] == [(2, 768, 4), (2, 192, 4), (2, 48, 4)]
    x = torch.relu(head.stem[0](feats[0]))
    raw_obj, raw_del = head.objectness(x), head.deltas(x)  # (B, A, H, W), (B, 4A, H, W)
    b, i, j, a = 1, 5, 7, 2
    n = (i * 16 + j) * 3 + a
    torch.testing.assert_close(logits[0][b, n], raw_obj[b, a, i, j])
    torch.testing.assert_close(deltas[0][b, n], raw_del[b, 4 * a : 4 * a + 4, i, j])


def _rpn(tiny):
    return build_model(tiny(fpn_channels=8)).rpn


def test_losses_finite_and_zero_gt(tiny, gen):
    rpn = _rpn(tiny).train()
    feats = [f.requires_grad_() for f in _features(gen=gen)]
    sizes = torch.tensor([[128, 128], [128, 100]])
    targets = Targets(
        boxes=torch.tensor([[[10.0, 10, 50, 60]], [[0, 0, 0, 0]]]),
        labels=torch.tensor([[1], [0]]),
        valid=torch.tensor([[True], [False]]),
    )
    proposals, valid, losses = rpn(feats, sizes, targets=targets, generator=gen)
    assert set(losses) == {"loss_rpn_obj", "loss_rpn_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert torch.isfinite(feats[0].grad).all()
    empty = Targets(
        torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0, dtype=torch.bool)
    )
    _, _, losses = rpn(feats, sizes, targets=empty, generator=gen)
    assert torch.isfinite(losses["loss_rpn_obj"]) and losses["loss_rpn_box"] == 0


def test_proposals_clipped_sorted_and_limited(tiny, gen):
    rpn = _rpn(tiny).eval()
    sizes = torch.tensor([[128, 128], [90, 70]])
    proposals, valid, losses = rpn(_features(gen=gen), sizes)
    assert losses == {}
    assert proposals.shape == (2, rpn.post_nms_topk["test"], 4) and valid.shape == proposals.shape[:2]
    for b in range(2):
        p = proposals[b][valid[b]]
        assert p.shape[0] > 0
        assert (p[:, 0] >= 0).all() and (p[:, 2] <= sizes[b, 1]).all() and (p[:, 3] <= sizes[b, 0]).all()
        assert ((p[:, 2] - p[:, 0]) >= rpn.min_size).all()
        assert valid[b, : p.shape[0]].all()  # valid slots come first


def test_padding_anchors_are_ignored(tiny, gen):
    """An image's proposals do not change when its maps are zero-padded with an extent mask."""
    rpn = _rpn(tiny).eval()
    feats = _features(B=1, gen=gen)
    sizes = torch.tensor([[128, 128]])
    alone, valid_alone, _ = rpn(feats, sizes)
    padded = [torch.nn.functional.pad(f, (0, f.shape[-1] // 2, 0, f.shape[-2])) for f in feats]
    boxed, valid_boxed, _ = rpn(padded, sizes, padded_sizes=torch.tensor([[128, 128]]))
    torch.testing.assert_close(boxed[0][valid_boxed[0]], alone[0][valid_alone[0]])
