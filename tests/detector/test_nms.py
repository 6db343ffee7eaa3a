import pytest
import torch
from torchvision.ops import nms

from detector.nms import nms_matrix, nms_per_group
from detector.syncs import HostSyncCounter


def _clustered_groups(G, K, gen):
    """Score-sorted groups of boxes in a few dense clusters (like RPN candidates), some invalid."""
    centres = torch.rand(G, 4, 2, generator=gen) * 300  # 4 clusters per group
    which = torch.randint(0, 4, (G, K), generator=gen)
    c = torch.gather(centres, 1, which[..., None].expand(-1, -1, 2)) + torch.randn(G, K, 2, generator=gen) * 12
    wh = torch.rand(G, K, 2, generator=gen) * 60 + 10
    boxes = torch.cat([c - wh / 2, c + wh / 2], -1)
    scores = torch.rand(G, K, generator=gen).sort(dim=1, descending=True).values
    valid = torch.rand(G, K, generator=gen) > 0.1
    return boxes, scores, valid


def _reference(boxes, scores, valid, thr):
    keep = torch.zeros_like(valid)
    for g in range(boxes.shape[0]):
        idx = valid[g].nonzero().squeeze(1)
        keep[g, idx[nms(boxes[g, idx], scores[g, idx], thr)]] = True
    return keep


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("impl", [nms_matrix, nms_per_group])
def test_equals_torchvision_nms_per_group(gen, thr, impl):
    boxes, scores, valid = _clustered_groups(6, 300, gen)
    keep = impl(boxes, scores, valid, thr)
    assert keep.shape == valid.shape and keep.dtype == torch.bool
    ref = _reference(boxes, scores, valid, thr)
    assert torch.equal(keep, ref)
    assert 0 < ref.sum() < valid.sum()  # the case suppresses something and keeps something


def test_matrix_chunks_and_long_chains(gen):
    """A chain where each box overlaps only the next one: greedy keeps every other box, which
    takes the fixed-point iteration one step per link; chunking over groups changes nothing."""
    K = 40
    x = torch.arange(K, dtype=torch.float32) * 6.0  # width 10, step 6: IoU(i, i+1) = 4/16 = 0.25
    chain = torch.stack([x, torch.zeros(K), x + 10, torch.full((K,), 10.0)], 1)
    boxes = torch.stack([chain, chain + 1000])  # (2, K, 4)
    scores = torch.linspace(1, 0, K).expand(2, K)
    valid = torch.ones(2, K, dtype=torch.bool)
    with HostSyncCounter() as c:
        keep = nms_matrix(boxes, scores, valid, 0.2, max_chunk_elements=K * K, check_every=3)
    assert torch.equal(keep, _reference(boxes, scores, valid, 0.2))
    assert keep[0].tolist() == [k % 2 == 0 for k in range(K)]
    # 40 links at 3 steps per round: 14 rounds, each one check for both chunks
    assert c.counts == {"Tensor.tolist (device to host)": 14}


def test_matrix_checks_all_chunks_at_once(gen):
    """Groups processed in 6 chunks cost the host one convergence check, not one per chunk."""
    boxes, scores, valid = _clustered_groups(6, 300, gen)
    with HostSyncCounter() as c:
        keep = nms_matrix(boxes, scores, valid, 0.5, max_chunk_elements=300 * 300)
    assert torch.equal(keep, _reference(boxes, scores, valid, 0.5))
    assert c.counts == {"Tensor.tolist (device to host)": 1}


def test_empty_and_all_invalid():
    assert nms_matrix(torch.zeros(0, 5, 4), torch.zeros(0, 5), torch.zeros(0, 5, dtype=torch.bool), 0.5).shape == (0, 5)
    boxes = torch.tensor([[[0.0, 0, 10, 10], [1, 1, 11, 11]]])
    none = torch.zeros(1, 2, dtype=torch.bool)
    for impl in (nms_matrix, nms_per_group):
        assert not impl(boxes, torch.tensor([[0.9, 0.8]]), none, 0.5).any()
