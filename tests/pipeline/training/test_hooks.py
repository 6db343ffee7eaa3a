"""Training hooks (pipeline/training/hooks.py) on real tiny runs without Ray.

Validation on every rank: each rank infers its shard, rank 0 scores exactly what one rank alone scores
(2 gloo processes on tiny data). BadImages: an undecodable training image is replaced, named once,
counted per epoch, kept in the checkpoint's state; too many stop the run with the list."""

from __future__ import annotations

import copy
import json
import multiprocessing
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipeline.data.errors import TooManyBadImagesError
from pipeline.evaluation import shard_indices
from pipeline.training.hooks import Validation
from pipeline.training.worker import build_trainer, default_hooks, eval_dataset


class EveryBoxDetector(torch.nn.Module):
    """Proposes every ground-truth box of the split on every image, scored from the image's pixels and
    the ``bias`` buffer: some true, some false positives, ranked across images (a non-trivial AP)."""

    def __init__(self, coco_json):
        super().__init__()
        anns = json.loads(Path(coco_json).read_text())["annotations"]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        self.register_buffer("boxes", torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), dim=1))  # (G, 4) xyxy
        self.register_buffer("labels", torch.tensor([a["category_id"] for a in anns]))
        self.register_buffer("bias", torch.zeros(()))

    def forward(self, images):
        out = []
        for image in images:
            steps = torch.arange(len(self.boxes), dtype=torch.float32)
            scores = (image.mean() * 7.0 + steps * 0.37 + self.bias) % 1.0
            out.append({"boxes": self.boxes.clone(), "scores": scores, "labels": self.labels.clone()})
        return out


def _validate(dataset, model, rank=0, world=1, init_file=None, results=None):
    """Run the Validation hook once (after the last epoch) on a stand-in trainer; its row."""
    if world > 1:
        torch.set_num_threads(1)
        model = copy.deepcopy(model)  # torch shares the tensors it sends to another process: a copy of its own
        torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
        if rank == 1:  # rank 0's buffers win: a stale batch-norm statistic elsewhere must not change the result
            model.bias.add_(0.5)
    trainer = SimpleNamespace(epoch=1, epochs=1, model=model, model_without_ddp=model, device="cpu", row={})
    hook = Validation(dataset, every=1, batch_size=2)
    hook._trainer_ref = lambda: trainer
    hook.after_epoch()
    if world > 1:
        results.put((rank, trainer.row))
        torch.distributed.destroy_process_group()
    return trainer.row


def test_shards_hold_every_image_once():
    shards = [shard_indices(7, rank, 3) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(7))


@pytest.mark.slow
def test_two_ranks_on_their_shards_score_what_rank_0_alone_scores(tiny_params, tiny_coco):
    params = tiny_params()
    dataset = eval_dataset(tiny_coco / "val.json", params)
    model = EveryBoxDetector(tiny_coco / "val.json")
    alone = _validate(dataset, model)
    assert 0.0 < alone["AP50"] < 1.0  # not trivially equal

    context = multiprocessing.get_context("spawn")  # fork after torch's threads started can deadlock
    results = context.Queue()
    init_file = tempfile.mktemp(prefix="gloo-")
    procs = [context.Process(target=_validate, args=(dataset, model, rank, 2, init_file, results))
             for rank in range(2)]
    for proc in procs:
        proc.start()
    rows = dict(results.get(timeout=180) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert rows[1] == {}  # only rank 0 scores
    assert rows[0] == alone


def test_validation_is_registered_on_every_rank(tiny_params, tiny_coco):
    params = tiny_params("train.val_every=1")
    for rank in (0, 1):
        assert any(isinstance(hook, Validation) for hook in default_hooks(params, tiny_coco, rank=rank))


def _corrupt_train_image(data_dir: Path, corrupt_jpeg, index: int = 2) -> Path:
    coco = json.loads((data_dir / "train.json").read_text())
    img = coco["images"][index]
    bad = corrupt_jpeg(data_dir / "images/train/bad.jpg", size=(img["width"], img["height"]))
    img["file_name"] = "images/train/bad.jpg"
    (data_dir / "train.json").write_text(json.dumps(coco))
    return bad


def test_a_corrupt_training_image_is_skipped_named_once_and_counted(tiny_params, tiny_coco, corrupt_jpeg, caplog):
    bad = _corrupt_train_image(tiny_coco, corrupt_jpeg)
    params = tiny_params("train.epochs=2", "train.val_every=0", "data.max_bad_fraction=0.2")
    trainer, _ = build_trainer(params, tiny_coco)
    trainer.register_hooks(default_hooks(params, tiny_coco, rank=0))
    with caplog.at_level("WARNING", logger="pipeline"):
        trainer.train()
    assert [row["bad_images"] for row in trainer.history] == [1, 1]  # every epoch finished, 1 skipped in each
    assert list(trainer.bad_images) == [str(bad)] and "broken data stream" in trainer.bad_images[str(bad)]
    named = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    assert len(named) == 1 and "broken data stream" in named[0]  # once per file, not once per epoch
    assert trainer.state_dict()["bad_images"] == trainer.bad_images


def test_more_bad_images_than_max_bad_fraction_stop_the_run_with_the_list(tiny_params, tiny_coco, corrupt_jpeg):
    bad = _corrupt_train_image(tiny_coco, corrupt_jpeg)
    params = tiny_params("train.epochs=2", "train.val_every=0")  # default 0.001 of 8 images: none allowed
    trainer, _ = build_trainer(params, tiny_coco)
    trainer.register_hooks(default_hooks(params, tiny_coco, rank=0))
    with pytest.raises(TooManyBadImagesError, match=r"1 of the 8 train images cannot be decoded.*max_bad_fraction=0\.001") as err:
        trainer.train()
    assert f"{bad}: OSError: broken data stream" in str(err.value)
    assert trainer.history == []  # stopped inside the first epoch (one rank: at once)


def test_bad_images_fail_stops_at_the_first_one(tiny_params, tiny_coco, corrupt_jpeg):
    from pipeline.data.errors import BadImageError

    _corrupt_train_image(tiny_coco, corrupt_jpeg)
    params = tiny_params("train.val_every=0", "data.bad_images=fail")
    trainer, _ = build_trainer(params, tiny_coco)
    trainer.register_hooks(default_hooks(params, tiny_coco, rank=0))
    with pytest.raises(BadImageError, match=r"bad\.jpg .*cannot be decoded"):
        trainer.train()
