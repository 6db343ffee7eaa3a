"""Aspect-ratio grouped DDP batches and per-sample augmentation seeds (pipeline/data/batching.py)."""

import bisect
from collections import Counter

import numpy as np
import pytest
import torch

from pipeline.data.batching import GroupedBatchSampler, SeededItems, aspect_ratio_groups


def test_groups_are_torchvisions_bins_and_never_mix_orientations():
    ratios = [0.3, 0.5, 0.6, 0.75, 0.99, 1.0, 1.2, 4 / 3, 1.5, 16 / 9, 2.0, 3.0]
    bins = sorted(2 ** np.linspace(-1, 1, 7))  # torchvision references: k = 3
    expected = [bisect.bisect_right(bins, r) for r in ratios]
    groups = aspect_ratio_groups(ratios)
    assert groups.tolist() == expected
    portrait = {g for g, r in zip(groups, ratios) if r < 1}
    landscape = {g for g, r in zip(groups, ratios) if r >= 1}
    assert portrait and landscape and not portrait & landscape
    assert aspect_ratio_groups([0.7, 1.4], factor=0).tolist() == [0, 1]


def _epoch(group_ids, batch_size, world, epoch, seed=0):
    """Every rank's batches of one epoch, each rank with its own sampler (as DDP ranks have)."""
    out = []
    for rank in range(world):
        sampler = GroupedBatchSampler(group_ids, batch_size, num_replicas=world, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        out.append([[i for i, _ in batch] for batch in sampler])
        assert len(out[-1]) == len(sampler)
    return out


CASES = [  # (images, groups, batch size, world size)
    (97, 8, 4, 2), (100, 2, 4, 3), (8, 1, 2, 2), (9, 1, 2, 2), (33, 5, 3, 4), (12, 3, 16, 2), (5, 1, 1, 2),
    (1000, 8, 2, 8), (3, 3, 2, 3),
]


@pytest.mark.parametrize("n, num_groups, batch_size, world", CASES)
def test_each_image_once_per_epoch_one_group_per_batch_equal_steps(n, num_groups, batch_size, world):
    rng = np.random.default_rng(n)
    group_ids = rng.integers(0, num_groups, n)
    plans = []
    for epoch in range(3):
        ranks = _epoch(group_ids, batch_size, world, epoch)
        steps = {len(batches) for batches in ranks}
        assert len(steps) == 1, "ranks would run different numbers of DDP steps"
        seen = Counter(i for batches in ranks for batch in batches for i in batch)
        if n >= steps.pop() * world:
            assert sorted(seen) == list(range(n)) and set(seen.values()) == {1}
        else:  # fewer images than steps x ranks: every image, and as few repeats as needed
            assert set(seen) == set(range(n)) and sum(seen.values()) == len(ranks[0]) * world
        for batches in ranks:
            for batch in batches:
                assert 1 <= len(batch) <= batch_size
                assert len({int(group_ids[i]) for i in batch}) == 1, "a batch mixes aspect-ratio groups"
        plans.append(ranks)
    assert plans[0] != plans[1]  # a new order every epoch
    assert _epoch(group_ids, batch_size, world, 1) == plans[1]  # and the same one when repeated


def test_full_batches_where_the_groups_allow_and_len_is_fixed():
    group_ids = np.array([0] * 40 + [1] * 24)  # 64 images, batch 8, 2 ranks: 5 + 3 full batches, 4 steps
    sampler = GroupedBatchSampler(group_ids, 8, num_replicas=2, rank=1, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert [len(b) for b in sampler] == [8, 8, 8, 8] and len(sampler) == 4


def test_too_few_images_for_the_ranks_is_an_error():
    with pytest.raises(ValueError, match="2 images are fewer than 3 DDP workers"):
        GroupedBatchSampler([0, 0], 1, num_replicas=3)


class _Flips(torch.utils.data.Dataset):
    """Item ``i``: a few random draws from torch's global RNG (what the transforms use)."""

    def __len__(self):
        return 10

    def __getitem__(self, index):
        return index, torch.rand(3)


def _run(workers, epochs=2, seed=0):
    sampler = GroupedBatchSampler(np.zeros(10, dtype=int), 3, num_replicas=1, seed=seed)
    loader = torch.utils.data.DataLoader(SeededItems(_Flips()), batch_sampler=sampler, num_workers=workers,
                                         persistent_workers=workers > 0, collate_fn=lambda b: b)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out.append({index: draws.tolist() for batch in loader for index, draws in batch})
    return out


def test_augmentation_seeds_differ_per_epoch_and_do_not_depend_on_loader_workers():
    in_process = _run(workers=0)
    assert in_process[0][4] != in_process[1][4]  # a new augmentation every epoch
    assert _run(workers=2) == in_process  # persistent worker processes draw exactly the same
    assert _run(workers=0, seed=1)[0][4] != in_process[0][4]
    before = torch.get_rng_state()
    SeededItems(_Flips())[(4, 123)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random stream is untouched
