"""Loss scale independent of the number of processes: with 2 gloo processes (DDP), the
distillation gradient on each rank equals the single-process gradient on the union of their
batches -- for every family, dense and two-stage heads included (the ranks' foreground masses,
ROI weights and mask-ROI counts differ)."""
import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mgd_det.matching import NetOutputs, PathwayDistiller, PathwaySpec, TeacherOutput
from mgd_det.matching.outputs import RegionOutputs

CHANNELS = {"c3": (3, 6), "c4": (3, 3)}
SPECS = [PathwaySpec("AMP", "c3", 0.1), PathwaySpec("PKD", "c4", 2.0), PathwaySpec("KD", factor=0.5),
         PathwaySpec("BOX", factor=0.7), PathwaySpec("RPN_KD", factor=0.9), PathwaySpec("RPN_BOX", factor=0.6),
         PathwaySpec("ROI_KD", factor=0.8), PathwaySpec("ROI_BOX", factor=1.1), PathwaySpec("MASK_KD", factor=1.3)]
ROIS, CLASSES = 3, 3  # distillation ROIs per image; classes of the two-stage head (+ background)


class TinyStudent(nn.Module):
    """Two feature positions, a dense 'head' with logits, an 'RPN' (2 anchors per location) and
    'ROI heads' on per-ROI inputs (box and mask); no batch statistics anywhere."""

    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv2d(2, 3, 3, padding=1)
        self.c4 = nn.Conv2d(3, 3, 3, padding=1)
        self.cls = nn.Conv2d(3, 4, 1)
        self.box = nn.Conv2d(3, 4, 1)
        self.objectness = nn.Conv2d(3, 2, 1)
        self.anchor_deltas = nn.Conv2d(3, 8, 1)
        self.roi_cls = nn.Linear(5, CLASSES + 1)
        self.roi_box = nn.Linear(5, 4 * CLASSES)
        self.mask = nn.Conv2d(5, CLASSES, 1)
        self.distiller = PathwayDistiller(SPECS, CHANNELS, num_classes=4,
                                          option_defaults={"student_norm": "GN", "norm_groups": 1})

    def forward(self, images, roi_inputs, teacher: TeacherOutput):
        c3 = self.c3(images)
        c4 = self.c4(torch.relu(c3))
        rois = roi_inputs.flatten(0, 1)  # (images x ROIS, 5)
        masks = self.mask(rois[teacher.regions.mask_rois][:, :, None, None].expand(-1, -1, 2, 2))
        out = NetOutputs({"c3": c3, "c4": c4}, logits=[self.cls(c4)], box_deltas=[self.box(c4)],
                         rpn_logits=[self.objectness(c4)], rpn_deltas=[self.anchor_deltas(c4)],
                         regions=RegionOutputs(self.roi_cls(rois), self.roi_box(rois), masks, teacher.regions.mask_rois))
        return sum(self.distiller(out, teacher).values())


def union_batch():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4, 2, 6, 6, generator=gen)
    roi_inputs = torch.randn(4, ROIS, 5, generator=gen)
    teacher = TeacherOutput(
        {"c3": torch.randn(4, 6, 6, 6, generator=gen), "c4": torch.randn(4, 3, 6, 6, generator=gen)},
        logits=[torch.randn(4, 4, 6, 6, generator=gen)], box_deltas=[torch.randn(4, 4, 6, 6, generator=gen)],
        rpn_logits=[torch.randn(4, 2, 6, 6, generator=gen)], rpn_deltas=[torch.randn(4, 8, 6, 6, generator=gen)],
        regions=RegionOutputs(torch.randn(4 * ROIS, CLASSES + 1, generator=gen),
                              torch.randn(4 * ROIS, 4 * CLASSES, generator=gen),
                              torch.randn(4 * ROIS, CLASSES, 2, 2, generator=gen)),
    )
    # one image the teacher is sure of, on rank 0's share: the ranks' foreground masses differ
    teacher.logits[0][0, :, :3] += 6.0
    teacher.rpn_logits[0][1, :, :4] += 5.0
    teacher.regions.class_logits[:ROIS, 0] += 5.0  # image 0's ROIs: foreground to the teacher
    # mask ROIs: 4 on rank 0's images, 1 on rank 1's
    teacher.regions.mask_rois = torch.tensor([True, True, True, False, True, False,
                                              False, False, True, False, False, False])
    teacher.regions.mask_logits = teacher.regions.mask_logits[teacher.regions.mask_rois]
    return images, roi_inputs, teacher


def rank_share(teacher: TeacherOutput, index) -> TeacherOutput:
    rois = slice(index.start * ROIS, index.stop * ROIS)
    regions = teacher.regions
    mask_rois = regions.mask_rois[rois]
    before = int(regions.mask_rois[:rois.start].sum())
    return TeacherOutput(
        {k: v[index] for k, v in teacher.features.items()},
        logits=[x[index] for x in teacher.logits], box_deltas=[x[index] for x in teacher.box_deltas],
        rpn_logits=[x[index] for x in teacher.rpn_logits], rpn_deltas=[x[index] for x in teacher.rpn_deltas],
        regions=RegionOutputs(regions.class_logits[rois], regions.box_deltas[rois],
                              regions.mask_logits[before:before + int(mask_rois.sum())], mask_rois),
    )


def make_model():
    torch.manual_seed(1)
    model = TinyStudent()
    # A fixed, non-trivial assignment so that both runs use the same one.
    model.distiller.matchers["c3_g2"].assignment.copy_(torch.tensor([[0, 5], [2, 3], [1, 4]]))
    return model


def gradients(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank, world, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        images, roi_inputs, teacher = union_batch()
        index = slice(rank * 2, rank * 2 + 2)  # equal shares, as Detectron2 splits the batch
        model = DistributedDataParallel(make_model())
        model(images[index], roi_inputs[index], rank_share(teacher, index)).backward()
        torch.save(gradients(model.module), os.path.join(out_dir, f"grad{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_distillation_gradient_is_the_same_on_2_processes_as_on_their_union(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    images, roi_inputs, teacher = union_batch()
    single = make_model()
    single(images, roi_inputs, teacher).backward()
    expected = gradients(single)
    assert {"c3.weight", "c4.weight", "cls.weight", "box.weight", "objectness.weight", "anchor_deltas.weight",
            "roi_cls.weight", "roi_box.weight", "mask.weight"} <= set(expected)
    for rank in range(2):
        got = torch.load(tmp_path / f"grad{rank}.pt")
        assert sorted(got) == sorted(expected)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
