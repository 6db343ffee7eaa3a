"""Batched inference: boxes back in original pixels, thresholds, batch independence, model mode."""

import pytest

from pipeline.evaluation import InferenceTiming, evaluate_model, run_inference


def test_boxes_are_written_in_original_pixels_as_xywh(fake_detector, fake_dataset):
    # The model sees 100x150 images of originally 200x300 pixels: a box in input pixels doubles.
    model = fake_detector({7: ([[10.0, 10.0, 20.0, 30.0]], [0.9], [2])})
    results = run_inference(model, fake_dataset([7], input_hw=(100, 150), orig_hw=(200, 300)))
    assert model.seen_sizes == [(100, 150)]
    assert results == [{"image_id": 7, "category_id": 2, "bbox": [20.0, 20.0, 20.0, 40.0], "score": 0.9}]


def test_score_threshold_and_empty_outputs(fake_detector, fake_dataset):
    model = fake_detector({1: ([[0, 0, 5, 5], [0, 0, 9, 9]], [0.04, 0.5], [1, 1])})  # image 2: nothing
    results = run_inference(model, fake_dataset([1, 2]), score_threshold=0.05)
    assert [r["score"] for r in results] == [0.5]


def test_results_do_not_depend_on_batch_size(fake_detector, fake_dataset):
    outputs = {i: ([[i, i, 2 * i + 5, 3 * i + 5]], [0.1 * i], [1 + i % 2]) for i in range(1, 6)}
    single = run_inference(fake_detector(outputs), fake_dataset(range(1, 6)), batch_size=1)
    batched = run_inference(fake_detector(outputs), fake_dataset(range(1, 6)), batch_size=3)
    assert single == batched and len(single) == 5


@pytest.mark.parametrize("training", [True, False])
def test_runs_in_eval_mode_and_restores_mode(fake_detector, fake_dataset, training):
    model = fake_detector({})
    model.train(training)
    timing = InferenceTiming()
    run_inference(model, fake_dataset([1, 2, 3]), batch_size=2, timing=timing)
    assert model.seen_modes == [False] * 3
    assert model.training is training
    assert timing.images == 3 and timing.seconds > 0
    assert timing.as_metrics()["ms_per_image"] == pytest.approx(1000 * timing.seconds / 3, abs=1e-3)


def test_evaluate_model_perfect_fake_gives_ap_one(write_gt, fake_detector, fake_dataset):
    gt = {1: [(1, [10, 20, 100, 60]), (2, [150, 40, 60, 60])], 2: [(2, [0, 0, 50, 50])]}
    path = write_gt(gt, size=(200, 300))
    # the model sees the images at half size: its boxes are the ground truth halved
    outputs = {i: ([[v / 2 for v in (x, y, x + w, y + h)] for _, (x, y, w, h) in objs], [0.9] * len(objs),
                   [c for c, _ in objs]) for i, objs in gt.items()}
    model = fake_detector(outputs).train()
    metrics = evaluate_model(model, fake_dataset([1, 2], input_hw=(100, 150), orig_hw=(200, 300),
                                                 coco_json_path=path), batch_size=2)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP_per_class"] == {"circle": pytest.approx(1.0), "square": pytest.approx(1.0)}
    assert metrics["images_per_s"] > 0 and metrics["ms_per_image"] > 0
    assert model.training


def test_evaluate_model_without_detections_gives_zero(write_gt, fake_detector, fake_dataset):
    path = write_gt({1: [(1, [10, 20, 100, 60])]})
    metrics = evaluate_model(fake_detector({}), fake_dataset([1], coco_json_path=path))
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["AR100"] == 0.0
