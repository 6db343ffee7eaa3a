
import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from detector.backbone import SPECS, _trunk, build_backbone, regnet_x_200mf


@pytest.mark.parametrize("name", list(SPECS))
def test_channels_and_strides(name):
    spec = SPECS[name]
    trunk = _trunk(name, None).eval()
    from torchvision.models.feature_extraction import create_feature_extractor

    body = create_feature_extractor(trunk, return_nodes={n: n for n in spec.nodes})
    with torch.no_grad():
        outs = body(torch.zeros(1, 3, 64, 96))
    assert [outs[n].shape[1] for n in spec.nodes] == list(spec.channels)
    assert [tuple(outs[n].shape[-2:]) for n in spec.nodes] == [(64 // s, 96 // s) for s in (4, 8, 16, 32)]


@pytest.mark.parametrize("levels", [[3, 4, 5], [2, 3, 4], [3, 4, 5, 6]])
def test_fpn_levels(levels):
    bb = build_backbone("resnet18", levels, 16).eval()
    with torch.no_grad():
        feats = bb(torch.zeros(1, 3, 128, 192))
    assert bb.strides == [2**lv for lv in levels]
    assert [tuple(f.shape) for f in feats] == [(1, 16, 128 // s, 192 // s) for s in bb.strides]


def test_from_scratch_uses_trainable_batch_norm():
    bb = build_backbone("resnet18", [3, 4, 5], 16, pretrained=None, trainable_layers=0)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules())
    assert all(p.requires_grad for p in bb.parameters())


def test_pretrained_from_local_file_freezes_bottom_stages(tmp_path):
    trunk = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(trunk.state_dict(), path)
    bb = build_backbone("resnet18", [3, 4, 5], 16, pretrained=str(path), trainable_layers=2)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())
    params = dict(bb.body.named_parameters())
    torch.testing.assert_close(params["conv1.weight"], trunk.conv1.weight)
    frozen = {n.split(".")[0] for n, p in params.items() if not p.requires_grad}
    trainable = {n.split(".")[0] for n, p in params.items() if p.requires_grad}
    assert frozen == {"conv1", "layer1", "layer2"} and trainable == {"layer3", "layer4"}


def test_pretrained_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_backbone("resnet18", [3, 4, 5], 16, pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="neither a file nor a torchvision weights name"):
        build_backbone("resnet18", [3, 4, 5], 16, pretrained="NoSuch_Weights.V1")

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="torch hub cache .* or pass its path"):
        build_backbone("resnet18", [3, 4, 5], 16, pretrained="DEFAULT")


def test_regnet_x_200mf_is_the_papers_design():
    trunk = regnet_x_200mf()
    stages = [getattr(trunk.trunk_output, f"block{i}") for i in range(1, 5)]
    assert [len(stage) for stage in stages] == [1, 1, 4, 7]  # pycls RegNetX-200MF: 13 blocks
    assert [stage[-1].f.c[0].out_channels for stage in stages] == [24, 56, 152, 368]
    assert all(block.f.b[0].groups == block.f.b[0].out_channels // 8 for stage in stages for block in stage)
    assert 2.5e6 < sum(p.numel() for p in trunk.parameters()) < 2.8e6  # 2.7M with the 1000-class fc


def test_regnet_x_200mf_pretrained_only_from_a_file(tmp_path):
    with pytest.raises(ValueError, match="no weights for regnet_x_200mf.*local state-dict"):
        build_backbone("regnet_x_200mf", [3, 4, 5], 16, pretrained="DEFAULT")
    trunk = regnet_x_200mf()
    path = tmp_path / "regnet_x_200mf.pth"
    torch.save(trunk.state_dict(), path)
    bb = build_backbone("regnet_x_200mf", [3, 4, 5], 16, pretrained=str(path))
    torch.testing.assert_close(bb.body.state_dict()["stem.0.weight"], trunk.stem[0].weight)
