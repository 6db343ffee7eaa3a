import pytest
import torch

from detector import FasterRCNN, box_iou, build_model


def _diverse(model: FasterRCNN) -> FasterRCNN:
    """Random-init heads give near-equal scores; spread them so ties cannot reorder results."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in (model.rpn.head.objectness, model.roi_heads.box_head.cls_score):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.5)
    return model.eval()


def test_seed_shapes(tiny):
    """The seed's example: (2, 3, 224, 224) -> p3/p4/p5 of 28/14/7 and 2352/588/147 anchors."""
    model = build_model(tiny(anchors={"scales": [8], "aspect_ratios": [0.5, 1.0, 2.0]})).eval()
    with torch.no_grad():
        feats, batch = model.features(list(torch.zeros(2, 3, 224, 224)))
    assert [tuple(f.shape[-2:]) for f in feats] == [(28, 28), (14, 14), (7, 7)] and batch.padded_sizes is None
    anchors = model.rpn.anchor_generator([f.shape[-2:] for f in feats])
    assert [a.shape[0] for a in anchors] == [2352, 588, 147]
    logits, deltas = model.rpn.head(feats)
    assert [tuple(t.shape) for t in logits] == [(2, 2352), (2, 588), (2, 147)]
    assert [tuple(t.shape) for t in deltas] == [(2, 2352, 4), (2, 588, 4), (2, 147, 4)]


def test_train_and_eval_outputs(tiny, toy, gen):
    model = build_model(tiny())
    imgs, targets = toy(gen)
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}  # no GT
    losses = model.train()(list(imgs), targets, generator=gen)
    assert set(losses) == {"loss_rpn_obj", "loss_rpn_box", "loss_cls", "loss_box"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    no_gt = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = model(imgs, no_gt, generator=gen)  # a whole batch without GT, (B, 3, H, W) input
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        dets = model(imgs)
    assert len(dets) == 2 and set(dets[0]) == {"boxes", "scores", "labels"}
    assert model.class_names == ["square", "bar"] and model.config.num_classes == 2


def test_train_batch_of_mixed_sizes_runs_the_backbone_once(tiny, gen):
    """Three images of three sizes: one backbone call on one padded tensor, so batch norm
    normalises over the whole batch and updates its running statistics once."""
    model = build_model(tiny()).train()
    calls = []
    model.backbone.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.num_batches_tracked.item() for m in norms]
    means = [m.running_mean.clone() for m in norms]
    images = [torch.rand(3, h, w, generator=gen) for h, w in ((64, 96), (100, 70), (128, 128))]
    box = {"boxes": torch.tensor([[5.0, 5, 40, 50]]), "labels": torch.tensor([1])}
    losses = model(images, [box] * 3, generator=gen)
    assert calls == [(3, 3, 128, 128)]  # padded to the largest, a multiple of the stride 32
    assert [m.num_batches_tracked.item() for m in norms] == [n + 1 for n in before]
    assert any(not torch.equal(m.running_mean, mean) for m, mean in zip(norms, means))
    assert all(torch.isfinite(v) for v in losses.values())
    _, batch = model.features(images)
    assert batch.padded_sizes.tolist() == [[64, 96], [128, 96], [128, 128]]
    assert batch.image_sizes.tolist() == [[64, 96], [100, 70], [128, 128]]
    assert batch.tensor.is_contiguous(memory_format=torch.channels_last)
    assert (batch.tensor[0, :, 64:] == 0).all() and (batch.tensor[1, :, :, 96:] == 0).all()


@pytest.mark.parametrize("other_size", [(160, 200), (90, 120)])  # a different padded size / the same one
def test_single_image_equals_padded_batch(tiny, gen, other_size):
    model = _diverse(build_model(tiny(roi={"score_threshold": 0.0})))
    a = torch.rand(3, 96, 128, generator=gen)
    b = torch.rand(3, *other_size, generator=gen)
    with torch.no_grad():
        alone = model([a])[0]
        first = model([a, b])[0]
        second = model([b, a])[1]
    assert alone["boxes"].shape[0] > 10
    for batched in (first, second):
        torch.testing.assert_close(batched["boxes"], alone["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(batched["scores"], alone["scores"], atol=1e-4, rtol=1e-4)
        assert torch.equal(batched["labels"], alone["labels"])
    assert (alone["boxes"][:, 2] <= 128).all() and (alone["boxes"][:, 3] <= 96).all()


def test_tensor_input_equals_list(tiny, gen):
    model = _diverse(build_model(tiny()))
    imgs = torch.rand(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        for x, y in zip(model(imgs), model(list(imgs))):
            torch.testing.assert_close(x["boxes"], y["boxes"])


@pytest.mark.parametrize(
    "target, message",
    [
        (
            {"boxes": torch.tensor([[10.0, 10, 5, 20]]), "labels": torch.tensor([1])},
            r"targets\[1\]: degenerate box 0",
        ),
        (
            {"boxes": torch.tensor([[0.0, 0, 5, 5], [1, 1, 1, 9]]), "labels": torch.tensor([1, 1])},
            "degenerate box 1",
        ),
        (
            {"boxes": torch.tensor([[0.0, 0, float("nan"), 5]]), "labels": torch.tensor([1])},
            "degenerate box 0",
        ),
        (
            {"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([3])},
            r"labels must be integers in 1\.\.2",
        ),
        ({"boxes": torch.tensor([[0.0, 0, 5, 5]]), "labels": torch.tensor([1, 2])}, "1 boxes but 2 labels"),
        ({"boxes": torch.tensor([[0.0, 0, 5, 5]])}, "needs 'boxes' and 'labels'"),
    ],
)
def test_bad_targets(tiny, gen, target, message):
    model = build_model(tiny()).train()
    good = {"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match=message):
        model(torch.rand(2, 3, 64, 64, generator=gen), [good, target])


def test_bad_inputs(tiny):
    model = build_model(tiny())
    with pytest.raises(ValueError, match="targets: required"):
        model.train()([torch.zeros(3, 32, 32)])
    model.eval()
    with pytest.raises(ValueError, match=r"images\[0\]: expected a \(3, H, W\)"):
        model([torch.zeros(1, 32, 32)])
    with pytest.raises(ValueError, match="empty batch"):
        model([])


def _fits(model, imgs, targets) -> bool:
    """Every GT box has a confident detection with IoU > 0.7 and the right label."""
    model.eval()
    with torch.no_grad():
        dets = model(imgs)
    model.train()
    for det, target in zip(dets, targets):
        confident = det["scores"] > 0.5
        if not confident.any():
            return False
        iou = box_iou(target["boxes"], det["boxes"][confident])  # (G, D)
        best = iou.max(dim=1)
        if not (
            (best.values > 0.7).all()
            and torch.equal(det["labels"][confident][best.indices], target["labels"])
        ):
            return False
    return True


def test_overfits_tiny_batch(tiny, toy):
    """The model learns a fixed batch from scratch within a few hundred CPU steps (stops once it has)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = build_model(tiny())
    imgs, targets = toy(gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    fitted = False
    for step in range(1, 301):
        losses = model(imgs, targets, generator=gen)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        if step >= 60 and step % 20 == 0 and _fits(model, imgs, targets):
            fitted = True
            break
    assert fitted, f"not fitted after {step} steps; last losses {losses}"


def test_compiled_backbone_keeps_checkpoint_keys(tiny):
    """``train.compile`` compiles the backbone in place: checkpoints keep their keys (compiling is lazy)."""
    model = build_model(tiny())
    keys = list(model.state_dict())
    model.backbone.compile()
    assert list(model.state_dict()) == keys
