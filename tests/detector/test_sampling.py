import pytest
import torch

from detector.sampling import sample_balanced


def _random_labels(B, N, p_fg, gen):
    r = torch.rand(B, N, generator=gen)
    return torch.where(r < p_fg, 1, torch.where(r < p_fg + 0.2, -1, 0)).to(torch.int8)


@pytest.mark.parametrize("p_fg", [0.0, 0.01, 0.3, 0.9])
def test_counts_and_kinds_per_image(gen, p_fg):
    B, N, S, frac = 4, 500, 64, 0.25
    labels = _random_labels(B, N, p_fg, gen)
    labels[2] = -1  # an image with nothing to sample
    index, mask = sample_balanced(labels, S, frac, generator=gen)
    assert index.shape == mask.shape == (B, S) and index.dtype == torch.int64 and mask.dtype == torch.bool
    for img in range(B):
        used = int(mask[img].sum())
        assert mask[img, :used].all()  # the used slots are a prefix
        drawn = index[img, :used]
        assert drawn.unique().numel() == drawn.numel()  # no duplicates
        kinds = labels[img, drawn]
        assert (kinds >= 0).all()  # never an ignored candidate
        n_fg_avail, n_bg_avail = (labels[img] == 1).sum().item(), (labels[img] == 0).sum().item()
        n_fg = min(n_fg_avail, int(S * frac))
        assert (kinds == 1).sum().item() == n_fg
        assert (kinds[:n_fg] == 1).all()  # foreground first
        assert (kinds == 0).sum().item() == min(S - n_fg, n_bg_avail)  # background fills up


def test_few_candidates_and_reproducible(gen):
    labels = torch.tensor([[1, 0, -1, 0], [-1, -1, 1, 1]], dtype=torch.int8)
    index, mask = sample_balanced(labels, 256, 0.5, generator=torch.Generator().manual_seed(1))
    assert index.shape == (2, 4)  # never more slots than candidates
    drawn = sorted((b, int(i)) for b in range(2) for i in index[b][mask[b]])
    assert drawn == [(0, 0), (0, 1), (0, 3), (1, 2), (1, 3)]
    index2, mask2 = sample_balanced(labels, 256, 0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(index, index2) and torch.equal(mask, mask2)


def test_uniform_choice(gen):
    """Each foreground candidate is picked about equally often."""
    labels = torch.ones(1, 10, dtype=torch.int8)
    hits = torch.zeros(10)
    for _ in range(400):
        index, mask = sample_balanced(labels, 4, 0.5, generator=gen)
        hits[index[mask]] += 1
    assert hits.sum() == 800 and hits.min() > 40 and hits.max() < 120
