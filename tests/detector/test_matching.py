import pytest
import torch
from torchvision.models.detection._utils import Matcher as TVMatcher

from detector.boxes import box_iou
from detector.matching import Matcher


def _tv_labels(matches: torch.Tensor) -> torch.Tensor:
    """torchvision's (-1 below low, -2 between, >= 0 matched) -> {0, -1, 1}."""
    return torch.where(matches >= 0, 1, torch.where(matches == -1, 0, -1)).to(torch.int8)


@pytest.mark.parametrize("allow_low_quality", [False, True])
def test_matches_torchvision(make_boxes, gen, allow_low_quality):
    anchors = make_boxes(300, generator=gen)
    gt = make_boxes(6, generator=gen)
    iou = box_iou(anchors, gt)  # (N, G)
    assert (iou.max(0).values > 0).all()  # torchvision differs when a GT box overlaps nothing
    theirs = TVMatcher(0.6, 0.3, allow_low_quality_matches=allow_low_quality)(iou.T.clone())
    matched_idx, labels = Matcher(0.6, 0.3, allow_low_quality)(anchors[None], gt[None])
    assert matched_idx.shape == labels.shape == (1, 300)
    torch.testing.assert_close(labels[0], _tv_labels(theirs))
    fg = labels[0] == 1
    torch.testing.assert_close(matched_idx[0][fg], theirs[fg])


def test_hand_computed():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30], [0, 0, 4, 4]])
    gt = torch.tensor([[[0.0, 0, 10, 10], [21, 21, 40, 40]]])
    # IoUs with gt0: 1, 0.5, 0, 0.16; with gt1: 0, 0, 81/461, 0
    idx, labels = Matcher(0.6, 0.3, allow_low_quality_matches=False)(anchors, gt)
    assert labels.tolist() == [[1, -1, 0, 0]]
    idx, labels = Matcher(0.6, 0.3, allow_low_quality_matches=True)(anchors, gt)
    assert labels.tolist() == [[1, -1, 1, 0]]  # anchor 2 is gt1's best
    assert idx[0, 0] == 0 and idx[0, 2] == 1


def test_padded_batch_equals_per_image(make_boxes, gen):
    anchors = make_boxes(200, generator=gen)
    counts = [3, 0, 5]
    G = max(counts)
    gt = torch.stack([make_boxes(G, generator=gen) for _ in counts])  # padding rows are random junk
    valid = torch.arange(G)[None, :] < torch.tensor(counts)[:, None]
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)
    idx, labels = matcher(anchors, gt, valid)
    for b, n in enumerate(counts):
        idx_b, labels_b = matcher(anchors, gt[b : b + 1, :n])
        assert torch.equal(labels[b], labels_b[0])
        fg = labels_b[0] == 1
        assert torch.equal(idx[b][fg], idx_b[0][fg])
    assert (labels[1] == 0).all()  # no ground truth: all background


def test_no_ground_truth_is_background(make_boxes, gen):
    idx, labels = Matcher(0.7, 0.3, True)(make_boxes(10, generator=gen), torch.zeros(2, 0, 4))
    assert labels.shape == (2, 10) and (labels == 0).all() and (idx == 0).all()


def test_low_above_high_rejected():
    with pytest.raises(ValueError, match="low"):
        Matcher(0.3, 0.6)
