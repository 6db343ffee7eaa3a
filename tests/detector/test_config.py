import pytest

from detector.config import AnchorConfig, DetectorConfig, RoIConfig, RPNConfig


def test_defaults():
    cfg = DetectorConfig(num_classes=3)
    assert cfg.backbone == "regnet_x_400mf" and cfg.fpn_levels == [3, 4, 5] and cfg.fpn_channels == 128
    assert cfg.anchors.scales == [8.0] and cfg.anchors.aspect_ratios == [0.5, 1.0, 2.0]
    assert cfg.rpn.iou_thresholds == [0.3, 0.6] and cfg.roi.box_weights == [10.0, 10.0, 5.0, 5.0]
    assert cfg.strides == [8, 16, 32] and cfg.rpn_stem_channels == [128]


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: RPNConfig(iou_thresholds=[0.7, 0.6]), "iou_thresholds"),
        (lambda: RPNConfig(iou_thresholds=[0.3]), "iou_thresholds"),
        (lambda: RPNConfig(positive_fraction=0.0), "positive_fraction"),
        (lambda: RPNConfig(positive_fraction=1.5), "positive_fraction"),
        (lambda: RPNConfig(batch_size_per_image=0), "batch_size_per_image"),
        (lambda: RPNConfig(post_nms_topk_test=-1), "post_nms_topk_test"),
        (lambda: RPNConfig(nms_threshold=0), "nms_threshold"),
        (lambda: RPNConfig(box_weights=[1, 1, 1]), "box_weights"),
        (lambda: RPNConfig(stem_channels=[0]), "stem_channels"),
        (lambda: RoIConfig(iou_threshold=1.2), "iou_threshold"),
        (lambda: RoIConfig(output_size=0), "output_size"),
        (lambda: RoIConfig(head_dim=-4), "head_dim"),
        (lambda: RoIConfig(score_threshold=1.0), "score_threshold"),
        (lambda: AnchorConfig(scales=[]), "scales"),
        (lambda: AnchorConfig(scales=[-1.0]), "scales"),
        (lambda: AnchorConfig(scales=[[4.0], [4.0, 8.0]]), "scales"),
        (lambda: AnchorConfig(aspect_ratios=[]), "aspect_ratios"),
        (lambda: AnchorConfig(aspect_ratios=[0.5, 0.0]), "aspect_ratios"),
        (lambda: DetectorConfig(num_classes=0), "num_classes"),
        (lambda: DetectorConfig(num_classes=2, class_names=["a"]), "class_names"),
        (lambda: DetectorConfig(num_classes=2, backbone="vgg16"), "backbone"),
        (lambda: DetectorConfig(num_classes=2, fpn_levels=[3, 7]), "fpn_levels"),
        (lambda: DetectorConfig(num_classes=2, fpn_levels=[3, 5]), "fpn_levels"),
        (lambda: DetectorConfig(num_classes=2, fpn_levels=[]), "fpn_levels"),
        (lambda: DetectorConfig(num_classes=2, fpn_channels=0), "fpn_channels"),
        (lambda: DetectorConfig(num_classes=2, trainable_backbone_layers=6), "trainable_backbone_layers"),
        (lambda: DetectorConfig(num_classes=2, image_std=[1.0, 0.0, 1.0]), "image_std"),
        (
            lambda: DetectorConfig(num_classes=2, anchors=AnchorConfig(scales=[[4.0], [8.0]])),
            "anchors.scales",
        ),
    ],
)
def test_bad_values_name_the_field(make, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        make()


def test_from_dict_and_round_trip():
    d = {
        "backbone": "resnet18",
        "fpn_levels": [3, 4, 5, 6],
        "anchors": {"scales": [[4, 8]] * 4, "aspect_ratios": [1]},
        "rpn": {"iou_thresholds": [0.3, 0.7], "stem_channels": [64, 64]},
        "roi": {"head_dim": 128},
    }
    cfg = DetectorConfig.from_dict(d, num_classes=2, class_names=["cat", "dog"])
    assert cfg.anchors.scales == [[4.0, 8.0]] * 4 and isinstance(cfg.anchors.aspect_ratios[0], float)
    assert cfg.rpn_stem_channels == [64, 64] and cfg.class_names == ["cat", "dog"]
    out = cfg.to_dict()
    assert out["rpn"]["iou_thresholds"] == [0.3, 0.7] and out["num_classes"] == 2
    again = DetectorConfig.from_dict(out, num_classes=2)
    assert again == cfg
    assert DetectorConfig.from_dict({}, num_classes=1) == DetectorConfig(num_classes=1)


@pytest.mark.parametrize(
    "d, message",
    [
        (
            {"rpn": {"iou_thresholds": [0.7, 0.6]}},
            r"model\.rpn\.iou_thresholds: low \(0\.7\) must be < high \(0\.6\)",
        ),
        ({"rpn": {"nms_thresh": 0.5}}, r"model\.rpn\.nms_thresh: unknown key"),
        ({"colour": "red"}, r"model\.colour: unknown key"),
        ({"fpn_channels": "wide"}, r"model\.fpn_channels: expected int, got 'wide'"),
        ({"fpn_channels": 1.5}, r"model\.fpn_channels: expected int"),
        (
            {"rpn": {"allow_low_quality_matches": "yes"}},
            r"model\.rpn\.allow_low_quality_matches: expected bool",
        ),
        ({"rpn": {"batch_size_per_image": True}}, r"model\.rpn\.batch_size_per_image: expected int"),
        ({"anchors": {"aspect_ratios": [0.5, "x"]}}, r"model\.anchors\.aspect_ratios"),
        ({"anchors": {"aspect_ratios": []}}, r"model\.anchors\.aspect_ratios: must not be empty"),
        ({"anchors": 3}, r"model\.anchors: expected a mapping"),
        ({"roi": {"positive_fraction": 0}}, r"model\.roi\.positive_fraction: must be in \(0, 1\]"),
        ({"backbone": "vgg"}, r"model\.backbone: unknown backbone 'vgg'"),
        ({"fpn_levels": [3, 8]}, r"model\.fpn_levels: unknown fpn level 8"),
        ({"pretrained": 3}, r"model\.pretrained: expected str or null"),
        ({"num_classes": 5}, r"model\.num_classes: 5 conflicts"),
    ],
)
def test_from_dict_errors_name_the_dotted_key(d, message):
    with pytest.raises(ValueError, match=message):
        DetectorConfig.from_dict(d, num_classes=2)


def test_custom_prefix():
    with pytest.raises(ValueError, match=r"^params\.model\.roi\.head_dim:"):
        DetectorConfig.from_dict({"roi": {"head_dim": 0}}, num_classes=2, prefix="params.model")
