"""The training state in a checkpoint (pipeline/training/state.py): plain data, loaded with weights_only=True."""

import os

import pytest
import torch

from pipeline.params import TrainParams
from pipeline.training import state as train_state
from pipeline.training.optim import build_optimizer, build_scheduler


def _real_state() -> dict:
    """What the loop saves, built from the same pieces (optimiser, schedule, scaler, RNGs)."""
    train = TrainParams(optimizer="adamw", lr_schedule="cosine", epochs=2)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = build_optimizer(model, train, 1e-3)
    scheduler = build_scheduler(optimizer, train, steps_per_epoch=3)
    model(torch.rand(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    scheduler.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": torch.amp.GradScaler("cuda", enabled=False).state_dict(), "epoch": 1, "global_step": 3,
            "history": [{"epoch": 1, "loss": 0.5, "world_size": 2}], "rng": train_state.rng_state(),
            "model_config": {"backbone": "resnet18", "anchors": {"scales": [4]}}, "class_names": ["a", "b"],
            "world_size": 2}


def test_training_state_round_trips_with_weights_only(tmp_path):
    saved = _real_state()
    train_state.save_state(tmp_path, saved)
    loaded = train_state.load_state(tmp_path)
    assert loaded["epoch"] == 1 and loaded["world_size"] == 2 and loaded["history"] == saved["history"]
    for key, value in saved["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert loaded["optimizer"]["param_groups"] == saved["optimizer"]["param_groups"]
    assert torch.equal(loaded["rng"]["torch"], saved["rng"]["torch"])


class _Payload:
    """Runs a command when unpickled: what a hostile checkpoint on shared storage could contain."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_object_inside_a_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    state = _real_state()
    state["history"] = [{"epoch": 1, "note": _Payload(marker)}]
    torch.save(state, tmp_path / train_state.STATE_FILE)
    with pytest.raises(train_state.CheckpointError, match=r"weights_only=True .*pickled objects is refused"):
        train_state.load_state(tmp_path)
    assert not marker.exists(), "loading the checkpoint ran code"


def test_files_that_are_not_training_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a training checkpoint folder"):
        train_state.load_state(tmp_path)
    (tmp_path / train_state.STATE_FILE).write_text("not a torch file")
    with pytest.raises(train_state.CheckpointError, match="could not be read as a training checkpoint"):
        train_state.load_state(tmp_path)
    torch.save({"model": {}, "epoch": 1}, tmp_path / train_state.STATE_FILE)  # plain data, wrong content
    with pytest.raises(train_state.CheckpointError, match="not a training state .*missing optimizer"):
        train_state.load_state(tmp_path)
