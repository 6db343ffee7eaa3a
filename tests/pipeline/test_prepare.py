"""``python -m pipeline prepare`` end to end in a tmp dir (pipeline/prepare.py)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = ["data.synthetic.num_train=6", "data.synthetic.num_val=3", "data.synthetic.image_size=96",
        "data.synthetic.min_object_size=8", "data.synthetic.max_object_size=48",
        "data.resize.min_size=96", "data.resize.max_size=96"]
OUTPUTS = ["data/prepared/train.json", "data/prepared/val.json", "reports/data.json", "reports/box_stats.json",
           "reports/box_stats.png", "reports/anchor_fit.json", "reports/anchor_fit.png", "reports/data_metrics.json"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def _sets(*items):
    return [arg for item in items for arg in ("--set", item)]


def test_synthetic_end_to_end_writes_every_output(workdir, capsys):
    from pycocotools.coco import COCO

    assert main(["prepare", *_sets(*TINY)]) == 0
    out = capsys.readouterr().out
    assert "train: 6 images" in out and "best possible recall" in out
    for path in OUTPUTS:
        assert (workdir / path).is_file(), path
    train = json.loads((workdir / "data/prepared/train.json").read_text())
    assert [c["id"] for c in train["categories"]] == [1, 2, 3, 4, 5]
    assert train["images"][0]["file_name"] == "images/train/000001.png"
    assert sorted(p.name for p in (workdir / "data/prepared/images/train").iterdir()) == \
           [f"{i:06d}.png" for i in range(1, 7)]
    report = json.loads((workdir / "reports/data.json").read_text())
    coco = COCO(str(workdir / "data/prepared/val.json"))  # the round trip: pycocotools reads the same counts
    assert len(coco.getImgIds()) == report["val"]["images"] == 3
    assert len(coco.getAnnIds()) == report["val"]["boxes"] > 0
    assert sum(report["train"]["boxes_per_class"].values()) == report["train"]["boxes"] == len(train["annotations"])
    for ann in train["annotations"]:
        assert ann["area"] == ann["bbox"][2] * ann["bbox"][3] and ann["iscrowd"] == 0
    fit = json.loads((workdir / "reports/anchor_fit.json").read_text())
    assert 0.0 <= fit["bpr"] <= 1.0 and fit["train"]["num_boxes"] == report["train"]["boxes"]
    assert json.loads((workdir / "reports/data_metrics.json").read_text()) == {"anchor_bpr": fit["bpr"]}
    assert set(fit["train"]["by_size"]) == {"small", "medium", "large"}
    stats = json.loads((workdir / "reports/box_stats.json").read_text())
    assert sum(stats["train"]["width"]["counts"]) == report["train"]["boxes"]

    # same seed, same bytes; a smaller dataset leaves no stale images behind
    first = (workdir / "data/prepared/images/train/000002.png").read_bytes()
    assert main(["prepare", *_sets(*TINY, "data.synthetic.num_train=2")]) == 0
    assert sorted(p.name for p in (workdir / "data/prepared/images/train").iterdir()) == ["000001.png", "000002.png"]
    assert (workdir / "data/prepared/images/train/000002.png").read_bytes() == first
    assert main(["prepare", *_sets(*TINY, "data.synthetic.num_train=2", "data.seed=1")]) == 0
    assert (workdir / "data/prepared/images/train/000002.png").read_bytes() != first


def _coco_source(root: Path, n: int = 5, outside: bool = False) -> Path:
    """``root/ann.json`` + ``root/imgs/{i}.jpg`` (40 x 30), two boxes per image (one crowd);
    with ``outside`` the first box of every image sticks out of the right border."""
    (root / "imgs").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        Image.fromarray(np.full((30, 40, 3), 50 * i, np.uint8)).save(root / "imgs" / f"{i}.jpg")
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 40, "height": 30})
        anns.append({"id": 10 + i, "image_id": i + 1, "category_id": 5, "bbox": [30, 5, 20 if outside else 10, 10],
                     "iscrowd": 0})
        anns.append({"id": 20 + i, "image_id": i + 1, "category_id": 6, "bbox": [1, 1, 5, 5], "iscrowd": int(i == 0)})
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                               "categories": [{"id": 5, "name": "a"}, {"id": 6, "name": "b"}]}))
    return root / "ann.json"


def test_coco_source_with_clip_policy_and_seeded_split(workdir):
    ann = _coco_source(workdir / "src", outside=True)
    sets = _sets("data.source=coco", f"data.coco.train_annotations={ann}", "data.coco.train_images=src/imgs",
                 "data.val_fraction=0.4", "data.on_invalid_box=clip")
    assert main(["prepare", *sets]) == 0
    report = json.loads((workdir / "reports/data.json").read_text())
    assert (report["train"]["images"], report["val"]["images"]) == (3, 2)
    assert report["train"]["input_boxes"] == {"clipped": 5}  # counted while reading the one file
    assert report["class_names"] == ["a", "b"]
    crowd = report["train"]["crowd_boxes"] + report["val"]["crowd_boxes"]
    assert crowd == 1
    val = json.loads((workdir / "data/prepared/val.json").read_text())
    assert all(a["bbox"] in ([30, 5, 10, 10], [1, 1, 5, 5]) for a in val["annotations"])
    for image in val["images"]:  # copied, resolvable relative to the json's folder
        assert (workdir / "data/prepared" / image["file_name"]).is_file()


def test_bad_input_is_one_error_line_and_keeps_old_outputs(workdir, capsys):
    assert main(["prepare", *_sets(*TINY)]) == 0
    ann = _coco_source(workdir / "src")
    (workdir / "src/imgs/3.jpg").unlink()
    sets = _sets("data.source=coco", f"data.coco.train_annotations={ann}", "data.coco.train_images=src/imgs")
    capsys.readouterr()
    assert main(["prepare", *sets]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "ann.json: image id 4: image file src/imgs/3.jpg not found" in err
    assert (workdir / "data/prepared/images/train/000006.png").is_file()  # nothing was deleted


def test_empty_val_split_is_an_error(workdir, capsys):
    ann = _coco_source(workdir / "src", n=2)
    val = workdir / "src/val.json"
    val.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 5, "name": "a"}]}))
    sets = _sets("data.source=coco", f"data.coco.train_annotations={ann}", "data.coco.train_images=src/imgs",
                 f"data.coco.val_annotations={val}", "data.coco.val_images=src/imgs")
    assert main(["prepare", *sets]) == 2
    assert "val.json: the val split has no images" in capsys.readouterr().err


VOC_XML = ("<annotation><filename>{id}.jpg</filename><size><width>30</width><height>20</height></size>"
           "<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>1</xmin>"
           "<ymin>1</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>")


def test_voc_source_end_to_end(workdir):
    for split, voc_id, name, difficult in (("train", "a", "dog", 1), ("val", "b", "cat", 0)):
        for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (workdir / "VOC" / folder).mkdir(parents=True, exist_ok=True)
        (workdir / f"VOC/Annotations/{voc_id}.xml").write_text(VOC_XML.format(id=voc_id, name=name,
                                                                               difficult=difficult))
        Image.new("RGB", (30, 20)).save(workdir / f"VOC/JPEGImages/{voc_id}.jpg")
        (workdir / f"VOC/ImageSets/Main/{split}.txt").write_text(f"{voc_id}\n")
    assert main(["prepare", *_sets("data.source=voc", "data.voc.root=VOC")]) == 0
    train = json.loads((workdir / "data/prepared/train.json").read_text())
    assert train["annotations"] == [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 20],
                                     "area": 400, "iscrowd": 1, "difficult": 1}]
    assert json.loads((workdir / "reports/data.json").read_text())["train"]["input_boxes"] == {"difficult": 1}


def test_coco_jpegs_are_referenced_in_place_not_copied(workdir, mixed_coco):
    from pycocotools.coco import COCO

    from pipeline.data.dataset import CocoDetectionDataset

    ann = mixed_coco("data/raw/coco", num_images=12)  # in the repository, as with `dvc add data/raw/coco`
    sets = _sets("data.source=coco", "data.coco.train_annotations=data/raw/coco/annotations.json",
                 "data.coco.train_images=data/raw/coco/images", "data.val_fraction=0.25")
    assert main(["prepare", *sets]) == 0
    prepared = workdir / "data/prepared"
    assert sorted(p.name for p in prepared.rglob("*")) == ["train.json", "val.json"]  # no image copies
    for split, count in (("train", 9), ("val", 3)):
        coco = json.loads((prepared / f"{split}.json").read_text())
        assert len(coco["images"]) == count and [c["id"] for c in coco["categories"]] == [1, 2]
        for image in coco["images"]:
            assert image["file_name"].startswith("../raw/coco/images/")  # relative: the clone can move
            assert (prepared / image["file_name"]).samefile(ann.parent / "images" / Path(image["file_name"]).name)
        assert len(COCO(str(prepared / f"{split}.json")).getImgIds()) == count
        dataset = CocoDetectionDataset(prepared / f"{split}.json")
        for i in range(len(dataset)):
            image, target = dataset[i]
            assert tuple(image.shape[1:]) == target["orig_size"] == (coco["images"][i]["height"],
                                                                     coco["images"][i]["width"])
    assert {img.shape[1] > img.shape[2] for img, _ in CocoDetectionDataset(prepared / "train.json")} == {True, False}
    report = json.loads((workdir / "reports/data.json").read_text())
    assert report["images_copied"] is False and report["verify_images"] == "header"

    moved = workdir.parent / "moved-clone"  # a clone elsewhere still resolves the relative file names
    shutil.copytree(workdir, moved)
    assert len(CocoDetectionDataset(moved / "data/prepared/val.json")[0][0].shape) == 3

    absolute = workdir / "data/raw/coco/images"  # shared storage: absolute paths stay absolute
    assert main(["prepare", *sets, "--set", f"data.coco.train_images={absolute}"]) == 0
    names = [img["file_name"] for img in json.loads((prepared / "train.json").read_text())["images"]]
    assert all(name.startswith(str(absolute) + "/") for name in names)


def test_held_out_test_split_is_disjoint_from_train_and_val(workdir, capsys):
    assert main(["prepare", *_sets(*TINY, "data.synthetic.num_train=10", "data.test_fraction=0.3")]) == 0
    assert "test: 3 images" in capsys.readouterr().out
    splits = {name: json.loads((workdir / f"data/prepared/{name}.json").read_text()) for name in ("train", "val", "test")}
    ids = {name: {img["id"] for img in coco["images"]} for name, coco in splits.items()}
    files = {name: {img["file_name"] for img in coco["images"]} for name, coco in splits.items()}
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (7, 3, 3)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not ids[a] & ids[b] and not files[a] & files[b], (a, b)
    for image in splits["test"]["images"]:
        assert (workdir / "data/prepared" / image["file_name"]).is_file()
    assert {a["image_id"] for a in splits["test"]["annotations"]} <= ids["test"]
    assert json.loads((workdir / "reports/data.json").read_text())["test"]["images"] == 3
    # without it, no test split is written and none is left behind
    assert main(["prepare", *_sets(*TINY)]) == 0
    assert not (workdir / "data/prepared/test.json").exists()


def test_coco_test_annotations_are_the_test_split(workdir, capsys):
    ann, held = _coco_source(workdir / "src"), _coco_source(workdir / "held", n=4)
    sets = _sets("data.source=coco", f"data.coco.train_annotations={ann}", "data.coco.train_images=src/imgs",
                 f"data.coco.test_annotations={held}", "data.coco.test_images=held/imgs")
    assert main(["prepare", *sets]) == 0
    test = json.loads((workdir / "data/prepared/test.json").read_text())
    assert len(test["images"]) == 4 and [c["name"] for c in test["categories"]] == ["a", "b"]
    assert main(["prepare", *sets, *_sets("data.test_fraction=0.2")]) == 2  # two test splits asked for
    capsys.readouterr()
    # the train images as "test": refused, naming the shared file
    assert main(["prepare", *sets, *_sets(f"data.coco.test_annotations={ann}", "data.coco.test_images=src/imgs")]) == 2
    assert "shares 4 image file(s) with the train split" in capsys.readouterr().err  # 4 of the 5 (val: 1)


def test_exif_oriented_photos_through_prepare_and_the_training_targets(workdir, capsys):
    """Phone photos stored 60x40 with EXIF orientations 1, 3, 6 and 8, annotated as a viewer shows them
    (upright size, the box on the white block where the viewer shows it): prepare counts the tags and
    the photos read turned, and every training target's box sits on the block in the image it comes with."""
    from pipeline.data.dataset import CocoDetectionDataset
    from pipeline.data.decode import oriented_size

    raw = workdir / "data/raw/phone"
    (raw / "images").mkdir(parents=True)
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[5:15, 10:30] = 255
    images, anns = [], []
    for k, orientation in enumerate([1, 3, 6, 8, 1, 6, 3, 8]):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(stored).save(raw / "images" / f"p{k}.jpg", exif=exif.tobytes(), quality=100, subsampling=0)
        upright = {1: stored, 3: stored[::-1, ::-1], 6: np.rot90(stored, -1), 8: np.rot90(stored, 1)}[orientation]
        ys, xs = np.nonzero(upright[..., 0] > 128)
        w, h = oriented_size((60, 40), orientation)
        images.append({"id": k + 1, "file_name": f"p{k}.jpg", "width": w, "height": h})
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": 1, "iscrowd": 0, "area": 200,
                     "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]})
    (raw / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                      "categories": [{"id": 1, "name": "block"}]}))
    sets = _sets("data.source=coco", "data.coco.train_annotations=data/raw/phone/annotations.json",
                 "data.coco.train_images=data/raw/phone/images", "data.val_fraction=0.25")
    assert main(["prepare", *sets]) == 0
    report = json.loads((workdir / "reports/data.json").read_text())
    assert report["exif_orientation"] == {"setting": "apply", "tagged": 6, "turned": 6}
    for split in ("train", "val"):
        dataset = CocoDetectionDataset(workdir / f"data/prepared/{split}.json")
        for i in range(len(dataset)):
            image, target = dataset[i]
            x0, y0, x1, y1 = (int(v) for v in target["boxes"][0].tolist())
            assert image[0, y0:y1, x0:x1].mean() > 0.9 and image[0].mean() < 0.2, (split, i)
    # the same photos annotated in the stored frame under the default (apply): a message names the frame and the fix
    for img in images:
        img["width"], img["height"] = 60, 40
    (raw / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns[:0],
                                                      "categories": [{"id": 1, "name": "block"}]}))
    assert main(["prepare", *sets]) == 2
    assert "is the stored frame of" in capsys.readouterr().err
    assert main(["prepare", *sets, "--set", "data.exif_orientation=ignore"]) == 0
    assert json.loads((workdir / "reports/data.json").read_text())["exif_orientation"]["turned"] == 0


def test_prepare_never_imports_torch(workdir, mixed_coco):
    """`prepare` is the data stage: it parses params.yaml (``detector.typed``) and fits anchors by the
    model's rule (``detector.anchor_cell``) without importing torch (~0.7 GB of its peak RSS)."""
    import subprocess
    import sys

    mixed_coco("data/raw/coco", num_images=8)
    sets = _sets("data.source=coco", "data.coco.train_annotations=data/raw/coco/annotations.json",
                 "data.coco.train_images=data/raw/coco/images", "data.val_fraction=0.25", "data.verify_images=decode")
    code = ("import sys; from pipeline.cli import main; code = main(sys.argv[1:]); "
            "print('torch imported:', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')));"
            " sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, "prepare", *sets], cwd=workdir, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "torch imported: []" in proc.stdout, proc.stdout[-2000:]


def test_anchor_shapes_without_torch_equal_the_models_cell_anchors():
    import torch

    from detector.anchors import cell_anchors
    from pipeline.anchor_search.geometry import anchor_shapes

    shapes = anchor_shapes([4, 8], [[2.0, 3.3], [1.5, 4.0]], [0.5, 1.0, 2.0])
    for stride, level_scales, wh in zip([4, 8], [[2.0, 3.3], [1.5, 4.0]], shapes):
        xyxy = cell_anchors(stride, level_scales, [0.5, 1.0, 2.0], dtype=torch.float64)
        assert np.array_equal(wh, (xyxy[:, 2:] - xyxy[:, :2]).numpy())
