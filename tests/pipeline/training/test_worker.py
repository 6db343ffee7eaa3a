"""The parts the per-worker training function builds (pipeline/training/worker.py)."""

import torch

from pipeline.data.dataset import FlatRecords
from pipeline.training.worker import build_trainer, eval_dataset, precise_bn_dataset


def test_precise_bn_views_the_training_split_instead_of_loading_it_again(tiny_params, tiny_coco, monkeypatch):
    params = tiny_params("train.precise_bn_images=4", "train.augment.hflip_prob=1.0")
    trainer, _ = build_trainer(params, tiny_coco)
    train_ds = trainer.dataset
    assert train_ds is trainer.loader.dataset.dataset  # the split the loader trains on

    def no_second_read(path):
        raise AssertionError(f"{path} read again")

    monkeypatch.setattr(FlatRecords, "read", no_second_read)
    view = precise_bn_dataset(params, trainer)
    assert view.records is train_ds.records and view.transforms is not train_ds.transforms
    monkeypatch.undo()
    reference = eval_dataset(tiny_coco / "train.json", params)  # the same split read with the eval transforms
    for index in range(len(view)):
        (image, target), (ref_image, ref_target) = view[index], reference[index]
        assert torch.equal(image, ref_image) and torch.equal(target["boxes"], ref_target["boxes"])
    flipped, _ = train_ds[0]  # the training view still flips (hflip_prob=1)
    assert not torch.equal(flipped, view[0][0])
