"""Pictures: boxes land on the right pixels in their styles, captions never overlap, a legend below."""

import itertools

from PIL import Image

from pipeline.evaluation.pictures import GT_COLOR, PRED_COLOR, annotate, image_grid, place_captions

NAMES = {1: "circle", 2: "square"}


def _count(image, color, box):
    x0, y0, x1, y1 = box
    return sum(image.getpixel((x, y)) == color for x in range(x0, x1) for y in range(y0, y1))


def test_ground_truth_and_predictions_drawn_where_they_belong():
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    gt = [{"bbox": [10, 10, 40, 20], "category_id": 1}]
    pred = [{"bbox": [60, 15, 20, 10], "category_id": 2, "score": 0.87}]
    # boxes given in a 100x50 frame, drawn on the 200x100 picture
    out = annotate(image, pred, NAMES, gt, scale=(2.0, 2.0))
    assert image.getpixel((20, 20)) == (0, 0, 0), "the input is not modified"
    assert out.width == 200 and out.height > 100  # the legend strip below the image
    left_edge = [out.getpixel((20, y)) for y in range(22, 58)]  # gt box (20, 20, 100, 60): dashed green
    assert 10 < left_edge.count(GT_COLOR) < len(left_edge) and set(left_edge) <= {GT_COLOR, (0, 0, 0)}
    assert out.getpixel((160, 45)) == PRED_COLOR  # right edge of the prediction (120, 30, 160, 50): solid
    assert out.getpixel((140, 40)) == (0, 0, 0)  # inside it
    caption = [out.getpixel((x, y)) for x in range(120, 160) for y in range(12, 30)]  # above the box
    assert caption.count(PRED_COLOR) > 100 and sum(min(p) > 200 for p in caption) > 5  # light text on red
    # the ground truth is not found by the prediction: its class is captioned below its box, in green
    assert _count(out, GT_COLOR, (20, 61, 60, 80)) > 80
    assert out.getpixel((5, 5)) == (0, 0, 0) and out.getpixel((190, 90)) == (0, 0, 0)
    legend = out.crop((0, 100, 200, out.height))
    assert _count(legend, PRED_COLOR, (0, 0, 200, legend.height)) > 10
    assert _count(legend, GT_COLOR, (0, 0, 200, legend.height)) > 10


def test_found_ground_truth_is_not_captioned_and_the_threshold_adds_a_legend_line():
    image = Image.new("RGB", (240, 160), (0, 0, 0))
    gt = [{"bbox": [40, 40, 80, 60], "category_id": 2}]
    pred = [{"bbox": [42, 41, 78, 60], "category_id": 2, "score": 0.9}]  # IoU > 0.5, same class
    out = annotate(image, pred, NAMES, gt)
    assert _count(out, GT_COLOR, (40, 101, 120, 125)) < 30  # only the dashed bottom edge, no caption below
    with_threshold = annotate(image, pred, NAMES, gt, score_threshold=0.3)
    assert with_threshold.height > out.height  # "score >= 0.30" takes one more legend line at this width


def test_captions_never_overlap_and_stay_near_their_boxes():
    # a crowd: 12 narrow boxes side by side, each wanting a caption wider than itself
    boxes = [(20 + 14 * i, 60, 32 + 14 * i, 100) for i in range(12)]
    requests = [(box, (50, 12), i % 3 != 0) for i, box in enumerate(boxes)]
    spots = place_captions(requests, (240, 180))
    placed = [s for s in spots if s is not None]
    assert len(placed) >= 6
    for a, b in itertools.combinations(placed, 2):
        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    for (box, _, _), spot in zip(requests, spots):
        if spot is not None:
            assert 0 <= spot[0] and spot[2] <= 240 and 0 <= spot[1] and spot[3] <= 180
            assert spot[1] >= box[1] - 4 * 12 and spot[3] <= box[3] + 4 * 12  # within a few caption heights
    # a lone box gets the spot it prefers: just above (predictions) or just below (ground truth)
    assert place_captions([((50, 50, 90, 80), (30, 10), True)], (200, 200)) == [(50, 40, 80, 50)]
    assert place_captions([((50, 50, 90, 80), (30, 10), False)], (200, 200)) == [(50, 80, 80, 90)]
    assert place_captions([((150, 0, 200, 20), (60, 10), True)], (200, 200)) == [(140, 0, 200, 10)]  # inside, slid


def test_grid_places_every_picture():
    pictures = [Image.new("RGB", (64, 32), (255, 0, 0)), Image.new("RGB", (32, 64), (0, 0, 255)),
                Image.new("RGB", (50, 50), (0, 255, 0))]
    grid = image_grid(pictures, columns=2, cell=64)
    assert grid.size == (128, 128)
    assert grid.getpixel((32, 32)) == (255, 0, 0)
    assert grid.getpixel((96, 32)) == (0, 0, 255)
    assert grid.getpixel((32, 96)) == (0, 255, 0)
    assert grid.getpixel((96, 96)) == (255, 255, 255)
