import pytest
import torch

from detector import build_model, load_checkpoint, read_checkpoint, save_checkpoint


def test_round_trip(tiny, gen, tmp_path):
    model = build_model(tiny(backbone="resnet18")).eval()
    imgs = torch.rand(2, 3, 64, 96, generator=gen)
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(path, model, extra={"epoch": 3, "metrics": {"AP": 0.5}})
    loaded = load_checkpoint(path)
    assert not loaded.training and loaded.config == model.config
    assert loaded.class_names == ["square", "bar"]
    with torch.no_grad():
        for x, y in zip(model(imgs), loaded(imgs)):
            for key in ("boxes", "scores", "labels"):
                torch.testing.assert_close(x[key], y[key])
    payload = read_checkpoint(path)
    assert payload["format"] == "detector-checkpoint" and payload["version"] == 1
    assert payload["extra"] == {"epoch": 3, "metrics": {"AP": 0.5}} and payload["num_classes"] == 2
    assert payload["config"]["backbone"] == "resnet18"


def test_pretrained_model_round_trip_offline(tiny, tmp_path):
    import torchvision

    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    model = build_model(tiny(backbone="resnet18", pretrained=str(weights))).eval()
    save_checkpoint(tmp_path / "m.pt", model)
    weights.unlink()  # loading must not need the pretrained file again
    loaded = load_checkpoint(tmp_path / "m.pt")
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


def test_class_names_override(tiny, tmp_path):
    model = build_model(tiny())
    save_checkpoint(tmp_path / "m.pt", model, class_names=["a", "b"])
    assert read_checkpoint(tmp_path / "m.pt")["class_names"] == ["a", "b"]


def test_bad_files(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(ValueError, match=r"junk\.pt.*could not be read.*expected a 'detector-checkpoint'"):
        load_checkpoint(junk)
    plain = tmp_path / "plain.pt"
    torch.save(build_model(tiny()).state_dict(), plain)
    with pytest.raises(
        ValueError, match=r"plain\.pt.*not a detector checkpoint \(found a plain state_dict\)"
    ):
        load_checkpoint(plain)
    other = tmp_path / "list.pt"
    torch.save([1, 2, 3], other)
    with pytest.raises(ValueError, match="found list"):
        read_checkpoint(other)
