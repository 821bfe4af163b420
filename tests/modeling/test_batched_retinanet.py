"""BatchedRetinaNet gives Detectron2's RetinaNet losses, labels and gradients on the same inputs.

Both models are built from the bundled R18 config (128² images: five anchor levels, strides 8
to 128); the inputs mix images without boxes, crowded images, boxes that leave anchors in the
ignore band of the IoU thresholds, and boxes of every size, so that every branch of the matcher
and every level is exercised (asserted, not assumed).
"""
import pytest
import torch
from detectron2.modeling import RetinaNet, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from mgd_det.config import setup_cfg
from mgd_det.modeling.batched_retinanet import BatchedRetinaNet, encode_boxes

import _tiny

SIZE, CLASSES = 128, 10


def build(meta_architecture, *opts):
    cfg = setup_cfg(_tiny.config_path("retinanet_R18_FPN.yaml"),
                    ["MODEL.DEVICE", "cpu", "MODEL.META_ARCHITECTURE", meta_architecture, *opts])
    torch.manual_seed(0)
    return build_model(cfg)


# One worker runs this file (pytest -n 2 --dist loadgroup): its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("modeling.test_batched_retinanet")


@pytest.fixture(scope="module")
def pair():
    """(Detectron2's RetinaNet, BatchedRetinaNet) with the same weights."""
    reference, batched = build("RetinaNet"), build("BatchedRetinaNet")
    batched.load_state_dict(reference.state_dict())
    assert type(reference) is RetinaNet and type(batched) is BatchedRetinaNet
    return reference, batched


def random_instances(generator, count, min_side=4.0, max_side=100.0):
    xy = torch.rand(count, 2, generator=generator) * (SIZE - min_side)
    wh = min_side + torch.rand(count, 2, generator=generator) * (max_side - min_side)
    instances = Instances((SIZE, SIZE))
    instances.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=SIZE)], dim=1))
    instances.gt_classes = torch.randint(0, CLASSES, (count,), generator=generator)
    return instances


def batch_instances(seed, counts):
    generator = torch.Generator().manual_seed(seed)
    return [random_instances(generator, n) for n in counts]


def dense_inputs(model, num_images, seed, dtype=torch.float32):
    """Anchors and random head outputs of ``num_images`` 128² images, per level."""
    generator = torch.Generator().manual_seed(seed)
    strides = [8, 16, 32, 64, 128]
    features = [torch.zeros(num_images, 1, SIZE // s, SIZE // s) for s in strides]
    anchors = model.anchor_generator(features)
    per_level = [len(a) for a in anchors]
    logits = [torch.randn(num_images, r, CLASSES, generator=generator, dtype=dtype) * 2 for r in per_level]
    deltas = [torch.randn(num_images, r, 4, generator=generator, dtype=dtype) for r in per_level]
    return anchors, logits, deltas


def both_losses(pair, gt, seed=0, dtype=torch.float32, storage_iter=0):
    reference, batched = pair
    anchors, logits, deltas = dense_inputs(reference, len(gt), seed, dtype)
    with EventStorage(storage_iter):
        ref_labels, ref_boxes = reference.label_anchors(anchors, gt)
        ref = reference.losses(anchors, logits, ref_labels, deltas, ref_boxes)
        labels, boxes = batched.label_anchors(anchors, gt)
        out = batched.losses(anchors, logits, labels, deltas, boxes)
    return ref, out, (torch.stack(ref_labels), torch.stack(ref_boxes)), (labels, boxes), anchors


def assert_losses_equal(ref, out, rtol=1e-5):
    assert sorted(ref) == sorted(out)
    for key in ref:
        assert out[key].dtype == ref[key].dtype, key
        torch.testing.assert_close(out[key], ref[key], rtol=rtol, atol=1e-7, msg=key)


BATCHES = {
    "mixed": [3, 0, 25, 1, 7, 0, 2, 12],  # empty and crowded images side by side
    "crowded": [40, 35, 30, 50],
    "one_box": [1, 1],
    "all_empty": [0, 0, 0],
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_labels_and_losses_equal_detectron2(pair, batch, seed):
    for model in pair:
        if hasattr(model, "loss_normalizer"):
            del model.loss_normalizer  # both start from Detectron2's initial EMA
    gt = batch_instances(seed, BATCHES[batch])
    ref, out, (ref_labels, ref_boxes), (labels, boxes), anchors = both_losses(pair, gt, seed)
    assert torch.equal(labels, ref_labels)
    foreground = (labels >= 0) & (labels < CLASSES)
    assert torch.equal(boxes[foreground], ref_boxes[foreground])
    assert_losses_equal(ref, out)
    assert pair[1].loss_normalizer == pair[0].loss_normalizer  # the EMA, bit for bit
    if batch == "all_empty":
        assert (labels == CLASSES).all() and float(out["loss_box_reg"]) == 0.0
        return
    # The inputs reach every branch: foreground, background and ignored anchors, and
    # foreground anchors on more than one pyramid level.
    assert {-1, CLASSES} <= set(labels.unique().tolist()) and foreground.any()
    level = torch.repeat_interleave(torch.arange(len(anchors)), torch.tensor([len(a) for a in anchors]))
    assert len(level[foreground.any(dim=0)].unique()) > 1


def test_normalizer_ema_follows_detectron2_over_steps(pair):
    for model in pair:
        if hasattr(model, "loss_normalizer"):
            del model.loss_normalizer
    for step, counts in enumerate([[3, 0, 5], [0, 0, 0], [20, 1, 2], [4, 4, 4]]):
        ref, out, *_ = both_losses(pair, batch_instances(10 + step, counts), seed=step)
        assert_losses_equal(ref, out)
        assert pair[1].loss_normalizer == pair[0].loss_normalizer


@pytest.mark.parametrize("loss_type,beta", [("smooth_l1", 0.0), ("smooth_l1", 0.1), ("giou", 0.0),
                                            ("diou", 0.0), ("ciou", 0.0)])
def test_box_loss_types_equal_detectron2(pair, loss_type, beta):
    for model in pair:
        model.box_reg_loss_type, model.smooth_l1_beta = loss_type, beta
        if hasattr(model, "loss_normalizer"):
            del model.loss_normalizer
    try:
        ref, out, *_ = both_losses(pair, batch_instances(5, [6, 0, 14]), seed=5)
    finally:
        for model in pair:
            model.box_reg_loss_type, model.smooth_l1_beta = "smooth_l1", 0.0
    assert float(out["loss_box_reg"]) > 0
    assert_losses_equal(ref, out)


def test_encode_boxes_is_get_deltas(pair):
    anchors = Boxes.cat(dense_inputs(pair[0], 1, 0)[0]).tensor
    targets = batch_instances(0, [len(anchors)])[0].gt_boxes.tensor
    transform = pair[0].box2box_transform
    assert torch.equal(encode_boxes(transform, anchors, targets), transform.get_deltas(anchors, targets))


def training_batch(seed, counts):
    generator = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=generator),
             "instances": random_instances(generator, n)} for n in counts]


def test_full_training_step_same_losses_and_gradients(pair):
    batch = training_batch(7, [4, 0, 11, 2])
    grads = []
    for model in pair:
        model.train()
        if hasattr(model, "loss_normalizer"):
            del model.loss_normalizer
        model.zero_grad()
        with EventStorage():
            losses = model(batch)
        sum(losses.values()).backward()
        grads.append((losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (ref, ref_grads), (out, out_grads) = grads
    assert_losses_equal(ref, out)
    assert sorted(out_grads) == sorted(ref_grads) and any(n.startswith("head.") for n in out_grads)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(out_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_weights_and_inference_are_retinanets(pair):
    reference, batched = pair
    assert batched.state_dict().keys() == reference.state_dict().keys()  # checkpoints interchange
    images = [{"image": x["image"], "height": SIZE, "width": SIZE} for x in training_batch(1, [0, 0])]
    for model in pair:
        model.eval()
    with torch.no_grad():
        ref, out = reference(images), batched(images)
    for r, o in zip(ref, out):
        assert torch.equal(r["instances"].pred_boxes.tensor, o["instances"].pred_boxes.tensor)
        assert torch.equal(r["instances"].scores, o["instances"].scores)


def test_num_pos_anchors_metric_is_the_period_mean(pair):
    batched = pair[1]
    batched._num_pos_sum.zero_()
    batched._num_pos_images = 0
    gt = batch_instances(4, [5, 0, 9])
    anchors, logits, deltas = dense_inputs(batched, len(gt), 4)
    labels, boxes = batched.label_anchors(anchors, gt)
    per_image = float(((labels >= 0) & (labels < CLASSES)).sum()) / len(gt)
    with EventStorage(0) as storage:  # iterations 0..period-2: nothing written
        for it in range(batched.metric_period):
            storage.iter = it
            batched.losses(anchors, logits, labels, deltas, boxes)
            written = storage.latest().get("num_pos_anchors")
            assert (written is None) == (it < batched.metric_period - 1)
    assert written[0] == pytest.approx(per_image) and written[1] == batched.metric_period - 1
    assert batched._num_pos_images == 0


def test_loss_normalizer_attribute_behaves_like_detectron2s(pair):
    from mgd_det.engine.snapshots import load_module_ema_state, module_ema_state

    batched = pair[1]
    del batched.loss_normalizer
    assert not hasattr(batched, "loss_normalizer") and module_ema_state(batched) == {}
    batched.loss_normalizer = 42.5
    assert module_ema_state(batched) == {"loss_normalizer": 42.5}
    load_module_ema_state(batched, {"loss_normalizer": 7.0})
    assert batched.loss_normalizer == 7.0 and float(batched._normalizer_ema) == 7.0


@pytest.mark.slow  # trains two tiny detectors through the trainer
@pytest.mark.parametrize("config_name", ["retinanet_R18_FPN_fast.yaml", "mgd_retinanet_R50_R18_AMP_fast.yaml"])
def test_fast_configs_train_with_the_batched_student(tiny_cfg, tmp_path, config_name):
    import json
    import math

    from _tiny import train

    trainer, _ = train(tiny_cfg(config_name, tmp_path))
    model = trainer.unwrapped_model if hasattr(trainer, "unwrapped_model") else trainer.model
    student = getattr(model, "student", model)
    assert type(student) is BatchedRetinaNet and student.loss_normalizer > 0
    lines = [json.loads(x) for x in open(tmp_path / "metrics.json")]
    assert any(math.isfinite(x.get("loss_cls", math.nan)) for x in lines)
    checkpoint = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert any(key.endswith("loss_normalizer") for key in json.dumps(checkpoint, default=str).split('"'))


def test_inputs_go_up_once_without_blocking(pair, monkeypatch):
    """Images, boxes and classes are copied with non_blocking=True (on CUDA a blocking copy waits
    for the queued forward); the caller's dicts are left as they were."""
    from mgd_det.modeling.uploads import upload_inputs

    batch = training_batch(3, [2, 0])
    originals = [(x["image"], x["instances"]) for x in batch]
    calls = []
    real_to = torch.Tensor.to

    def recording_to(tensor, *args, **kwargs):  # copies to a device (not dtype casts)
        if "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args):
            calls.append(kwargs.get("non_blocking", False))
        return real_to(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    uploaded = upload_inputs(batch, torch.device("cpu"))
    assert calls == [True] * 2 * len(batch)  # gt_boxes, gt_classes (the images are on the CPU already)
    assert [(x["image"], x["instances"]) for x in batch] == originals
    for x, y in zip(batch, uploaded):
        assert y["instances"] is not x["instances"] and type(y["instances"].gt_boxes) is Boxes
        assert torch.equal(y["instances"].gt_boxes.tensor, x["instances"].gt_boxes.tensor)
        assert torch.equal(y["instances"].gt_classes, x["instances"].gt_classes)
