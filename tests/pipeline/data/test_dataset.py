"""CocoDetectionDataset and collate_detection (pipeline/data/dataset.py)."""

import json

import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.data.dataset import CocoDetectionDataset, collate_detection
from pipeline.data.transforms import build_transforms


@pytest.fixture
def prepared(tmp_path):
    from PIL import Image

    (tmp_path / "images" / "train").mkdir(parents=True)
    Image.new("RGB", (40, 20), (10, 20, 30)).save(tmp_path / "images/train/a.png")
    Image.new("RGB", (30, 30)).save(tmp_path / "images/train/b.png")
    coco = {"images": [{"id": 5, "file_name": "images/train/a.png", "width": 40, "height": 20},
                       {"id": 6, "file_name": "images/train/b.png", "width": 30, "height": 30}],
            "annotations": [{"id": 1, "image_id": 5, "category_id": 2, "bbox": [1, 2, 10, 5], "iscrowd": 0},
                            {"id": 2, "image_id": 5, "category_id": 1, "bbox": [0, 0, 4, 4], "iscrowd": 1}],
            "categories": [{"id": 2, "name": "dog"}, {"id": 1, "name": "cat"}]}
    (tmp_path / "train.json").write_text(json.dumps(coco))
    return tmp_path / "train.json"


def test_dataset_returns_the_documented_target(prepared):
    ds = CocoDetectionDataset(prepared)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.image_ids == [5, 6] and ds.coco_json_path == prepared and len(ds) == 2
    image, target = ds[0]
    assert image.shape == (3, 20, 40) and image.dtype == torch.float32
    assert image[:, 0, 0].tolist() == pytest.approx([10 / 255, 20 / 255, 30 / 255])
    assert target["boxes"].dtype == torch.float32 and target["boxes"].tolist() == [[1, 2, 11, 7], [0, 0, 4, 4]]
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [2, 1]
    assert target["iscrowd"].tolist() == [0, 1]
    assert target["image_id"] == 5 and target["orig_size"] == (20, 40) and target["size"] == (20, 40)
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


def test_transforms_and_collate(prepared, tmp_path):
    ds = CocoDetectionDataset(str(prepared), images_dir=tmp_path,
                              transforms=build_transforms(train=False, min_size=40, max_size=100))
    image, target = ds[0]
    assert image.shape == (3, 40, 80) and target["size"] == (40, 80) and target["orig_size"] == (20, 40)
    assert target["boxes"][0].tolist() == [2, 4, 22, 14]
    images, targets = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate_detection)))
    assert [tuple(i.shape) for i in images] == [(3, 40, 80), (3, 40, 40)]
    assert [t["image_id"] for t in targets] == [5, 6]


def test_non_contiguous_categories_are_refused(prepared):
    coco = json.loads(prepared.read_text())
    coco["categories"][0]["id"] = 9
    prepared.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="category ids must be 1..C"):
        CocoDetectionDataset(prepared)


def _reference(path):
    """The targets as a plain whole-file read gives them: ``{image_id: (file_name, w, h, boxes, labels, iscrowd)}``."""
    coco = json.loads(path.read_text())
    out = {}
    for img in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        out[img["id"]] = (img["file_name"], img["width"], img["height"],
                          torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), dim=1),
                          torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                          torch.tensor([a.get("iscrowd", 0) for a in anns], dtype=torch.int64))
    return [img["id"] for img in coco["images"]], out


def _with_edge_cases(src, dest, category_ids):
    """``src`` with categories renumbered 1..C, annotations in reverse order (not grouped by image),
    one image without boxes and one box without ``iscrowd``."""
    coco = json.loads(src.read_text())
    new_id = {c: k + 1 for k, c in enumerate(category_ids)}
    for c in coco["categories"]:
        c["id"] = new_id[c["id"]]
    coco["categories"].reverse()
    for a in coco["annotations"]:
        a["category_id"] = new_id[a["category_id"]]
    coco["annotations"].reverse()
    del coco["annotations"][0]["iscrowd"]
    first = coco["images"][0]
    coco["images"].insert(1, {**first, "id": 99_999, "file_name": "empty/" + first["file_name"]})
    dest.write_text(json.dumps(coco))
    return dest


@pytest.mark.parametrize("source", ["tiny_coco", "mixed_coco"])
def test_flat_records_equal_a_plain_json_read(source, request, tmp_path):
    if source == "tiny_coco":
        src, category_ids = request.getfixturevalue("tiny_coco") / "train.json", (1, 2, 3)
    else:
        src, category_ids = request.getfixturevalue("mixed_coco")(), (3, 7)
    path = _with_edge_cases(src, tmp_path / "edge.json", category_ids)
    ids, reference = _reference(path)
    ds = CocoDetectionDataset(path, images_dir=src.parent)
    assert ds.image_ids == ids and len(ds) == len(ids)
    assert ds.class_names == [c["name"] for c in sorted(json.loads(path.read_text())["categories"],
                                                          key=lambda c: c["id"])]
    crowd = empty = 0
    for index, image_id in enumerate(ids):
        name, w, h, boxes, labels, iscrowd = reference[image_id]
        assert ds.image_path(index) == src.parent / name and ds.aspect_ratio(index) == w / h
        target = ds.raw_target(index)
        assert target["image_id"] == image_id and type(target["image_id"]) is int
        for key, expected in (("boxes", boxes), ("labels", labels), ("iscrowd", iscrowd)):
            assert target[key].dtype == expected.dtype and torch.equal(target[key], expected), (image_id, key)
        crowd += int(iscrowd.sum())
        empty += len(boxes) == 0
    assert crowd >= 1 and empty == 1  # the edge cases are covered


def test_targets_are_new_tensors(prepared):
    ds = CocoDetectionDataset(prepared)
    ds.raw_target(0)["boxes"].add_(100)
    ds[0][1]["labels"].zero_()
    assert ds.raw_target(0)["boxes"].tolist() == [[1, 2, 11, 7], [0, 0, 4, 4]]
    assert ds.raw_target(0)["labels"].tolist() == [2, 1]


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["annotations"][0].update(image_id=77), "points to image id 77, which is not in 'images'"),
    (lambda c: c["images"][1].update(id=5), "duplicate image id 5"),
    (lambda c: c.pop("categories"), "no 'categories'"),
    (lambda c: c["annotations"][0].update(bbox=[1, 2, 3]), "annotation id 1: bbox must be"),
])
def test_inconsistent_prepared_files_are_refused(prepared, edit, message):
    coco = json.loads(prepared.read_text())
    edit(coco)
    prepared.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=message) as err:
        CocoDetectionDataset(prepared)
    assert str(prepared) in str(err.value)


def test_malformed_json_names_the_file_and_position(prepared):
    prepared.write_text('{"images": [}')
    with pytest.raises(ValueError, match=r"train.json: not valid JSON: .* line 1 column 13"):
        CocoDetectionDataset(prepared)


def _with_corrupt_image(prepared, corrupt_jpeg, index=0):
    """``prepared`` with image ``index``'s file a JPEG whose scan data is damaged; returns its path."""
    coco = json.loads(prepared.read_text())
    bad = corrupt_jpeg(prepared.parent / "images/train/bad.jpg", size=(coco["images"][index]["width"],
                                                                    coco["images"][index]["height"]))
    coco["images"][index]["file_name"] = "images/train/bad.jpg"
    prepared.write_text(json.dumps(coco))
    return bad


def test_an_undecodable_image_is_replaced_by_the_next_one_and_named(prepared, corrupt_jpeg):
    bad = _with_corrupt_image(prepared, corrupt_jpeg)
    image, target = CocoDetectionDataset(prepared)[0]
    assert target["image_id"] == 6 and image.shape == (3, 30, 30)  # the next image, with its own target
    (entry,) = target["bad_images"]
    assert entry["file"] == str(bad) and "broken data stream" in entry["error"]
    assert "bad_images" not in CocoDetectionDataset(prepared)[1][1]


def test_an_undecodable_image_skipped_or_failed(prepared, corrupt_jpeg):
    from pipeline.data.errors import BadImageError

    bad = _with_corrupt_image(prepared, corrupt_jpeg, index=1)
    image, target = CocoDetectionDataset(prepared, on_bad_image="skip")[1]
    assert image is None and target["image_id"] == 6 and target["bad_images"][0]["file"] == str(bad)
    with pytest.raises(BadImageError, match=r"bad\.jpg \(image 6 of .*train\.json\) cannot be decoded.*bad_images: skip"):
        CocoDetectionDataset(prepared, on_bad_image="fail")[1]


def test_no_decodable_image_at_all_is_an_error(prepared, corrupt_jpeg):
    from pipeline.data.errors import TooManyBadImagesError

    coco = json.loads(prepared.read_text())
    for i, img in enumerate(coco["images"]):
        corrupt_jpeg(prepared.parent / f"images/train/bad{i}.jpg", size=(img["width"], img["height"]))
        img["file_name"] = f"images/train/bad{i}.jpg"
    prepared.write_text(json.dumps(coco))
    with pytest.raises(TooManyBadImagesError, match="2 images in a row"):
        CocoDetectionDataset(prepared)[0]


def _exif_jpeg(path, pixels, orientation):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=100, subsampling=0)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_turns_the_image_under_the_annotated_boxes(tmp_path, orientation):
    """A phone photo: stored 60x40 with a white block; the annotation (made on the upright picture a
    viewer shows) boxes the block where the viewer shows it: the training target sits on it."""
    import numpy as np

    from pipeline.data.decode import oriented_size

    stored = np.zeros((40, 60, 3), np.uint8)
    stored[5:15, 10:30] = 255  # the block: x 10..30, y 5..15 in the stored frame
    (tmp_path / "images").mkdir()
    _exif_jpeg(tmp_path / "images/p.jpg", stored, orientation)
    upright = {1: stored, 3: stored[::-1, ::-1], 6: np.rot90(stored, -1), 8: np.rot90(stored, 1)}[orientation]
    ys, xs = np.nonzero(upright[..., 0] > 128)
    box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    w, h = oriented_size((60, 40), orientation)
    coco = {"images": [{"id": 1, "file_name": "images/p.jpg", "width": w, "height": h}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "block"}]}
    (tmp_path / "train.json").write_text(json.dumps(coco))
    for setting in ("apply", "ignore"):
        if setting == "ignore" and orientation == 3:
            continue  # same size both ways: ignore means the boxes are in the stored frame
        image, target = CocoDetectionDataset(tmp_path / "train.json", exif_orientation=setting)[0]
        assert image.shape == (3, h, w)
        x0, y0, x1, y1 = (int(v) for v in target["boxes"][0].tolist())
        inside = image[0, y0:y1, x0:x1]
        assert inside.mean() > 0.9 and image[0].mean() < 0.2  # the box sits on the block
