import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from detector import build_model
from detector.backbone import SPECS, build_backbone
from detector.fusion import fold_conv_norm, fuse_conv_norm


def _randomise_statistics(module: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial norm statistics and affine parameters, so that folding has work to do."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


@pytest.mark.parametrize("norm_cls", [nn.BatchNorm2d, FrozenBatchNorm2d])
@pytest.mark.parametrize("conv_bias", [False, True])
def test_fold_conv_norm_equals_the_pair(gen, norm_cls, conv_bias):
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=conv_bias)
    norm = norm_cls(5)
    _randomise_statistics(norm, gen)
    pair = nn.Sequential(conv, norm).eval()
    x = torch.randn(2, 3, 8, 8, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(fold_conv_norm(conv, norm)(x), pair(x), rtol=1e-5, atol=1e-5)


def _pretrained_backbone(name: str, tmp_path) -> nn.Module:
    """A backbone with frozen batch norm, built from a local 'pretrained' state dict."""
    from detector.backbone import _BUILDERS

    trunk = _BUILDERS[name]() if name in _BUILDERS else torchvision.models.get_model(name, weights=None)
    path = tmp_path / f"{name}.pth"
    torch.save(trunk.state_dict(), path)
    return build_backbone(name, [3, 4, 5], 8, pretrained=str(path))


@pytest.mark.parametrize("pretrained", [False, True])
@pytest.mark.parametrize("name", list(SPECS))
def test_fuse_conv_norm_same_outputs_no_norm_left(name, pretrained, gen, tmp_path):
    bb = (_pretrained_backbone(name, tmp_path) if pretrained else build_backbone(name, [3, 4, 5], 8)).eval()
    _randomise_statistics(bb.body, gen)
    norms = [m for m in bb.body.modules() if isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d)]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) == pretrained for m in norms)
    fused = fuse_conv_norm(bb.body)
    assert not any(isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d) for m in fused.modules())
    x = torch.rand(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        ref, out = bb.body(x), fused(x)
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-4, atol=1e-4 * ref[key].abs().max().item())
    assert any(isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d) for m in bb.body.modules())  # a copy


def test_fuse_for_inference_same_detections_then_inference_only(tiny, gen):
    model = build_model(tiny()).eval()
    _randomise_statistics(model.backbone.body, gen)
    images = [torch.rand(3, 96, 128, generator=gen), torch.rand(3, 64, 64, generator=gen)]
    with torch.no_grad():
        before = model(images)
    state_keys = set(model.state_dict())
    assert model.fuse_for_inference() is model and model.fused
    with torch.no_grad():
        after = model(images)
    for b, a in zip(before, after):
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)
    assert len(set(model.state_dict())) < len(state_keys)  # the norm layers are gone
    with pytest.raises(RuntimeError, match="fused for inference"):
        model.train()
