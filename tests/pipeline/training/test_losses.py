"""The loss checks of a training step and the targets it trains on."""

import pytest
import torch

from pipeline.training.losses import NonFiniteLossError, check_finite, training_targets


def test_non_finite_loss_names_step_and_terms():
    check_finite({"loss_cls": 0.5, "loss_box": 0.1}, epoch=0, step=3, global_step=3)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 4 \(global step 14\).*loss_cls=nan"):
        check_finite({"loss_cls": float("nan"), "loss_box": 0.1}, epoch=1, step=3, global_step=13)
    with pytest.raises(NonFiniteLossError, match="total=inf"):
        check_finite({"loss_cls": 0.5}, epoch=0, step=0, global_step=0, total=float("inf"))


def test_crowd_boxes_are_not_training_targets():
    target = {"boxes": torch.tensor([[0, 0, 5, 5], [1, 1, 9, 9]], dtype=torch.float32),
              "labels": torch.tensor([1, 2]), "iscrowd": torch.tensor([0, 1])}
    (out,) = training_targets([target])
    assert out["boxes"].tolist() == [[0, 0, 5, 5]] and out["labels"].tolist() == [1]
    assert out["labels"].dtype == torch.int64 and set(out) == {"boxes", "labels"}
