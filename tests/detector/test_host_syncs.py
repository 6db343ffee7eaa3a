"""Host-device syncs, counted on the CPU standing in for CUDA (see ``detector/syncs.py``)."""

from pathlib import Path

import pytest
import torch

from detector import DetectorConfig, build_model
from detector.syncs import HostSyncCounter


def test_counter_sees_the_usual_suspects():
    x = torch.tensor([0.0, 2.0, 3.0]).to("cpu", non_blocking=True)  # now device data
    with HostSyncCounter() as c:
        x[x > 1].sum()  # boolean-mask indexing: nonzero
        float(x.max())  # .item()
        bool(x[0])
        x.tolist()
        x.cpu()
        torch.equal(x, x)
        x.nonzero()
        torch.tensor([1.0, 2.0], device=x.device)  # a blocking copy to the device
        torch.tensor([1.0, 2.0]).to(x.device)  # the same
        x[x > 1] = x.sum()  # a device value through a mask: nonzero
    assert c.counts == {
        "aten::index (boolean mask)": 1,
        "aten::_local_scalar_dense": 2,
        "Tensor.tolist (device to host)": 1,
        "Tensor.cpu (device to host)": 1,
        "aten::equal": 1,
        "aten::nonzero": 1,
        "torch.tensor (host to device)": 1,
        "Tensor.to (host to device)": 1,
        "aten::index_put_ (boolean mask)": 1,
    }


def test_counter_passes_what_does_not_wait_for_the_device():
    x = torch.tensor([0.0, 2.0, 3.0]).to("cpu", non_blocking=True)
    with HostSyncCounter() as c:
        x + 1
        x[torch.tensor([1, 2]).to(x.device, non_blocking=True)] = 0.5  # integer indices
        x[x > 1] = 0.5  # a host scalar through a mask: masked_fill_
        table = torch.tensor([[1, 2], [3, 4]])  # host data, read on the host
        table.tolist(), table[0, 1].item(), table.numpy()
        table.to(x.device, non_blocking=True)
        torch.zeros(2, device=x.device)
        x.numpy()  # fails for a device tensor; the .cpu() before it counts
        torch.repeat_interleave(torch.tensor([1, 2]).to(x.device, non_blocking=True), output_size=3)
    assert c.counts == {}


def test_counter_goes_by_the_tensors_devices_off_the_cpu():
    """``HostSyncCounter(device)`` for an accelerator: host and device are the tensors' own
    (here the meta device, which holds no data, stands for one)."""
    host = torch.ones(2)
    with HostSyncCounter("meta") as c:
        host.tolist(), host.sum().item()  # host data: no sync
        host.to("meta")
        host.to("meta", non_blocking=True)
        torch.tensor([1.0], device="meta")
        torch.zeros(2, device="meta").new_tensor([1.0])
    assert c.counts == {
        "Tensor.to (host to device)": 1,
        "torch.tensor (host to device)": 1,
        "Tensor.new_tensor (host to device)": 1,
    }


# Syncs of one training step of the default configuration with the kernels ``auto`` picks on
# CUDA (torchvision's roi_align per FPN level, the matrix NMS), as BENCHMARKS.md and README.md
# state them: the NMS checks its convergence once, and RoIAlign reads how many RoIs each level
# pools. The sync-free ``rows`` RoIAlign leaves the NMS check alone.
SYNCS_PER_STEP = {
    ("torchvision", 2): {"Tensor.tolist (device to host)": 2},
    ("torchvision", 8): {"Tensor.tolist (device to host)": 2},
    ("rows", 2): {"Tensor.tolist (device to host)": 1},
}


@pytest.mark.parametrize(("pooler", "batch"), list(SYNCS_PER_STEP))
def test_training_step_syncs(gen, pooler, batch):
    """Forward + backward of a mixed-size batch of 224 px images with targets on the host (as
    the loader gives them), from a fresh model (anchors not cached yet).

    The optimizer step is not counted: on CUDA its step counters live on the host."""
    config = DetectorConfig.from_dict({"roi": {"pooler": pooler}, "rpn": {"nms": "matrix"}}, num_classes=2)
    model = build_model(config).train()
    images = [torch.rand(3, *((224, 224) if k % 2 else (200, 160)), generator=gen) for k in range(batch)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12, 60, 70], [70, 20, 200, 90]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[5.0, 40, 90, 150]]), "labels": torch.tensor([2])},
    ] * (batch // 2)
    with HostSyncCounter() as c:
        losses = model(images, targets, generator=gen)
        sum(losses.values()).backward()
    assert dict(c.counts) == SYNCS_PER_STEP[pooler, batch]


def test_the_documents_state_these_counts():
    root = Path(__file__).resolve().parents[2]
    (n,) = {sum(SYNCS_PER_STEP["torchvision", batch].values()) for batch in (2, 8)}
    assert f"**{n} at batch 2 and 8**" in (root / "BENCHMARKS.md").read_text()
    assert f"makes {n} host-device syncs" in (root / "README.md").read_text()
