"""Device-to-host syncs per training step, counted on the CPU (the same operators run on CUDA)."""

import pytest
import torch

from detector import build_model
from detector.syncs import HostSyncCounter


def test_counter_sees_the_usual_suspects():
    x = torch.tensor([0.0, 2.0, 3.0])
    with HostSyncCounter() as c:
        x[x > 1].sum()  # boolean-mask indexing: nonzero
        float(x.max())  # .item()
        x + 1  # not a sync
        x.nonzero()
        x[torch.tensor([1, 2])] = 0.5  # integer indices: not a sync
    assert c.counts == {"aten::index (boolean mask)": 1, "aten::_local_scalar_dense": 1, "aten::nonzero": 1}


@pytest.mark.parametrize("pooler", ["rows", "torchvision"])
def test_training_step_has_at_most_4_host_syncs(tiny, gen, pooler):
    """Forward + backward of a mixed-size batch with targets on the host (as the loader gives
    them), with the CUDA defaults (matrix NMS; both RoIAlign backends).

    The optimizer step is not counted: on CUDA its step counters live on the host."""
    model = build_model(tiny(roi={"pooler": pooler}, rpn={"nms": "matrix"})).train()
    images = [torch.rand(3, 96, 128, generator=gen), torch.rand(3, 128, 100, generator=gen)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12, 60, 70], [70, 20, 120, 90]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[5.0, 40, 90, 60]]), "labels": torch.tensor([2])},
    ]
    with HostSyncCounter() as c:
        losses = model(images, targets, generator=gen)
        sum(losses.values()).backward()
    assert c.total <= 4, dict(c.counts)
    assert "torchvision::nms" not in c.counts and c.counts["aten::equal"] >= 1  # NMS: convergence checks
