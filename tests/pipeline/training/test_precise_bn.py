import torch
from torch import nn

from pipeline.training.precise_bn import recompute_bn_stats


class _Tiny(nn.Module):
    """A conv + batch norm 'detector' with the ``features`` entry point precise BN uses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4, momentum=0.1)

    def features(self, images):
        return self.bn(self.conv(torch.stack(images)))


def _dataset(n: int, gen: torch.Generator):
    return [(torch.rand(3, 8, 8, generator=gen) * (1 + i), {"boxes": torch.zeros(0, 4)}) for i in range(n)]


def test_running_stats_are_the_average_of_batch_stats():
    gen = torch.Generator().manual_seed(0)
    model, data = _Tiny().eval(), _dataset(10, gen)
    model.bn.running_mean.fill_(5.0)  # stale statistics
    used = recompute_bn_stats(model, data, num_images=8, batch_size=4)
    assert used == 8
    with torch.no_grad():
        batches = [model.conv(torch.stack([img for img, _ in data[k:k + 4]])) for k in (0, 4)]
    mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(model.bn.running_mean, mean)
    torch.testing.assert_close(model.bn.running_var, var)
    assert not model.training and model.bn.momentum == 0.1  # mode and momentum restored


def test_no_batch_norm_or_zero_images_is_a_no_op():
    gen = torch.Generator().manual_seed(1)
    model = _Tiny()
    before = model.bn.running_mean.clone()
    assert recompute_bn_stats(model, _dataset(4, gen), num_images=0) == 0
    torch.testing.assert_close(model.bn.running_mean, before)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3))
    plain.features = lambda images: plain(torch.stack(images))
    assert recompute_bn_stats(plain, _dataset(4, gen), num_images=4) == 0
