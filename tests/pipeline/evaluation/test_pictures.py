"""Pictures: boxes land on the right pixels, in the right colours; grids hold every picture."""

from PIL import Image

from pipeline.evaluation.pictures import GT_COLOR, PRED_COLOR, annotate, image_grid


def test_ground_truth_and_predictions_drawn_where_they_belong():
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    gt = [{"bbox": [10, 10, 40, 20], "category_id": 1}]
    pred = [{"bbox": [60, 15, 20, 10], "category_id": 2, "score": 0.87}]
    # boxes given in a 100x50 frame, drawn on the 200x100 picture
    out = annotate(image, pred, {1: "circle", 2: "square"}, gt, scale=(2.0, 2.0))
    assert image.getpixel((20, 20)) == (0, 0, 0), "the input is not modified"
    assert out.getpixel((20, 40)) == GT_COLOR  # left edge of the gt box, x=10*2, y in 20..60
    assert out.getpixel((160, 45)) == PRED_COLOR  # right edge of the prediction (120, 30, 160, 50)
    assert out.getpixel((140, 40)) == (0, 0, 0)  # inside it
    caption = [out.getpixel((x, y)) for x in range(120, 160) for y in range(15, 30)]  # above the box
    assert caption.count(PRED_COLOR) > 100 and sum(min(p) > 200 for p in caption) > 5  # light text on red
    assert out.getpixel((5, 5)) == (0, 0, 0) and out.getpixel((100, 80)) == (0, 0, 0)


def test_grid_places_every_picture():
    pictures = [Image.new("RGB", (64, 32), (255, 0, 0)), Image.new("RGB", (32, 64), (0, 0, 255)),
                Image.new("RGB", (50, 50), (0, 255, 0))]
    grid = image_grid(pictures, columns=2, cell=64)
    assert grid.size == (128, 128)
    assert grid.getpixel((32, 32)) == (255, 0, 0)
    assert grid.getpixel((96, 32)) == (0, 0, 255)
    assert grid.getpixel((32, 96)) == (0, 255, 0)
    assert grid.getpixel((96, 96)) == (255, 255, 255)
