"""The CUDA path: bf16/fp16 autocast training, the torchvision RoIAlign backend, host syncs,
batch independence and fusion on the device. Run by ``benchmarks/gpu.sh`` on a GPU machine."""

import pytest
import torch

from detector import build_model
from detector.pooling import MultiLevelRoIAlign
from detector.syncs import HostSyncCounter

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def _mixed_batch(gen):
    images = [torch.rand(3, 200, 260, generator=gen), torch.rand(3, 256, 180, generator=gen)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12, 60, 70], [70, 20, 250, 90]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[5.0, 40, 90, 200]]), "labels": torch.tensor([2])},
    ]
    return [img.to(CUDA) for img in images], targets


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pooler", ["rows", "torchvision"])
def test_autocast_training_step(tiny, gen, amp, pooler):
    model = build_model(tiny(roi={"pooler": pooler})).to(CUDA).train()
    images, targets = _mixed_batch(gen)
    with torch.autocast("cuda", dtype=amp):
        losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("pooler", ["rows", "torchvision"])
def test_cuda_step_makes_the_syncs_the_cpu_stand_in_counts(tiny, pooler):
    """The same step counted on CUDA (by the tensors' devices) and on the CPU standing in for
    it (how tests/detector/test_host_syncs.py counts): the same syncs."""
    config = tiny(roi={"pooler": pooler}, rpn={"nms": "matrix"})
    counts = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = build_model(config).to(device).train()
        images, targets = _mixed_batch(torch.Generator().manual_seed(0))
        images = [img.to(device) for img in images]
        with HostSyncCounter(device) as c:
            sum(model(images, targets).values()).backward()
        counts[device] = dict(c.counts)
    assert counts["cuda"] == counts["cpu"]
    with HostSyncCounter("cuda") as c, torch.autocast("cuda", dtype=torch.bfloat16):
        sum(model(images, targets).values()).backward()
    assert dict(c.counts) == counts["cuda"]


def test_backends_agree_on_cuda_in_bf16(gen):
    levels = [2, 3, 4, 5]
    feats = [torch.randn(2, 16, 800 // 2**lv, 1344 // 2**lv, generator=gen).to(CUDA) for lv in levels]
    xy = torch.rand(300, 2, generator=gen) * 1000
    boxes = torch.cat([xy, xy + torch.rand(300, 2, generator=gen) * 300 + 2], 1).to(CUDA)
    batch_idx = torch.randint(0, 2, (300,), generator=gen).to(CUDA)
    ref = MultiLevelRoIAlign(levels, 7, 2, backend="rows")(feats, boxes, batch_idx)
    tv = MultiLevelRoIAlign(levels, 7, 2, backend="torchvision")(feats, boxes, batch_idx)
    torch.testing.assert_close(tv, ref, atol=1e-4, rtol=1e-4)
    for backend in ("rows", "torchvision"):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = MultiLevelRoIAlign(levels, 7, 2, backend=backend)([f.bfloat16() for f in feats], boxes, batch_idx)
        ref16 = MultiLevelRoIAlign(levels, 7, 2, backend="rows")([f.bfloat16().float() for f in feats], boxes,
                                                                  batch_idx)
        err = ((out.float() - ref16).abs().mean() / ref16.abs().mean()).item()
        assert err < 0.01, (backend, err)


def test_single_image_equals_batch_and_fused_on_cuda(tiny, gen):
    model = build_model(tiny(roi={"score_threshold": 0.0})).to(CUDA).eval()
    a = torch.rand(3, 96, 128, generator=gen).to(CUDA)
    b = torch.rand(3, 160, 200, generator=gen).to(CUDA)
    with torch.no_grad():
        alone = model([a])[0]
        batched = model([b, a])[1]
        fused = model.fuse_for_inference()([a])[0]
    for other in (batched, fused):
        torch.testing.assert_close(other["scores"], alone["scores"], atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(other["boxes"], alone["boxes"], atol=1e-2, rtol=1e-3)
