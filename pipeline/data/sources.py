"""Read the train and val splits of the configured source (``data.source``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipeline.data.errors import DataError, EmptySplitError
from pipeline.data.records import Split
from pipeline.params import DataParams


def load_splits(data: DataParams, counts: dict[str, Counter]) -> tuple[Split, Split]:
    """``(train, val)`` from ``data.source``; box outcomes are added to ``counts[split]``.

    Raises:
        DataError: bad input (see :mod:`pipeline.data.errors`), including an empty split.
    """
    if data.source == "synthetic":
        train, val = _synthetic(data)
    elif data.source == "coco":
        train, val = _coco(data, counts)
    elif data.source == "voc":
        from pipeline.data.voc import read_voc

        assert data.voc.root is not None
        train, val = read_voc(data.voc.root, data.on_invalid_box, counts, data.seed, data.val_fraction, data.classes)
    else:  # pragma: no cover - params validation rejects other values
        raise DataError(f"data.source: unknown source {data.source!r}")
    for split in (train, val):
        if not len(split.images):
            raise EmptySplitError(f"{split.source}: the {split.name} split has no images; "
                                  f"add images to it or change the split (data.val_fraction)")
    return train, val


def hold_out_test(data: DataParams, train: Split, counts: dict[str, Counter]) -> tuple[Split, Split | None]:
    """``(train, test)``: the held-out test split that sweeps and validation never see, or ``None``.

    ``data.coco.test_annotations`` is read as it is (``data.source: coco``); else
    ``data.test_fraction`` of the train images (seeded by ``data.seed``) move to test. Either way
    test shares no image with val: val is its own file or was split off train before.
    """
    from pipeline.data.split import seeded_split

    c = data.coco
    if data.source == "coco" and c.test_annotations:
        from pipeline.data.coco import read_coco

        test_images = c.test_images or str(Path(c.test_annotations).parent)
        return train, read_coco(c.test_annotations, test_images, "test", data.on_invalid_box, counts["test"],
                                class_names=train.class_names)
    if data.test_fraction == 0:
        return train, None
    rows, test_rows = seeded_split(list(range(len(train.images))), data.seed + 1, data.test_fraction, train.source)
    return train.take(rows, "train"), train.take(test_rows, "test")


def _synthetic(data: DataParams) -> tuple[Split, Split]:
    from pipeline.data.synthetic import SHAPES, SyntheticConfig, generate_split

    s = data.synthetic
    config = SyntheticConfig(
        image_size=s.image_size, min_objects=s.min_objects, max_objects=s.max_objects,
        min_object_size=s.min_object_size, max_object_size=s.max_object_size,
        max_aspect_ratio=s.max_aspect_ratio, tall_wide_only=s.tall_wide_only,
        class_names=tuple(data.classes) if data.classes is not None else SHAPES,
    )
    try:
        train = generate_split("train", s.num_train, data.seed, config)
        val = generate_split("val", s.num_val, data.seed, config, first_image_id=s.num_train + 1,
                             first_box_id=1 + len(train.boxes))
    except ValueError as err:
        raise DataError(str(err)) from err
    return train, val


def _coco(data: DataParams, counts: dict[str, Counter]) -> tuple[Split, Split]:
    from pipeline.data.coco import read_coco
    from pipeline.data.split import seeded_split

    c = data.coco
    assert c.train_annotations is not None and c.train_images is not None
    train = read_coco(c.train_annotations, c.train_images, "train", data.on_invalid_box, counts["train"],
                      classes=data.classes)
    if c.val_annotations:
        val_images = c.val_images or str(Path(c.val_annotations).parent)
        val = read_coco(c.val_annotations, val_images, "val", data.on_invalid_box, counts["val"],
                        class_names=train.class_names)
        return train, val
    train_rows, val_rows = seeded_split(list(range(len(train.images))), data.seed, data.val_fraction, train.source)
    # box outcomes were counted while reading the one file: they stay under counts["train"]
    return train.take(train_rows, "train"), train.take(val_rows, "val")
