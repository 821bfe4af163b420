"""Loss scale independent of the number of processes: with 2 gloo processes (DDP), the
distillation gradient on each rank equals the single-process gradient on the union of their
batches."""
import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mgd_det.matching import NetOutputs, PathwayDistiller, PathwaySpec, TeacherOutput

CHANNELS = {"c3": (3, 6), "c4": (3, 3)}
SPECS = [PathwaySpec("AMP", "c3", 0.1), PathwaySpec("PKD", "c4", 2.0), PathwaySpec("KD", factor=0.5),
         PathwaySpec("BOX", factor=0.7)]


class TinyStudent(nn.Module):
    """Two feature positions and a 'head' with logits; no batch statistics anywhere."""

    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv2d(2, 3, 3, padding=1)
        self.c4 = nn.Conv2d(3, 3, 3, padding=1)
        self.cls = nn.Conv2d(3, 4, 1)
        self.box = nn.Conv2d(3, 4, 1)
        self.distiller = PathwayDistiller(SPECS, CHANNELS, num_classes=4,
                                          option_defaults={"student_norm": "GN", "norm_groups": 1})

    def forward(self, images, teacher: TeacherOutput):
        c3 = self.c3(images)
        c4 = self.c4(torch.relu(c3))
        out = NetOutputs({"c3": c3, "c4": c4}, logits=[self.cls(c4)], box_deltas=[self.box(c4)])
        return sum(self.distiller(out, teacher).values())


def union_batch():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4, 2, 6, 6, generator=gen)
    teacher = TeacherOutput(
        {"c3": torch.randn(4, 6, 6, 6, generator=gen), "c4": torch.randn(4, 3, 6, 6, generator=gen)},
        logits=[torch.randn(4, 4, 6, 6, generator=gen)], box_deltas=[torch.randn(4, 4, 6, 6, generator=gen)],
    )
    # one image the teacher is sure of, on rank 0's share: the ranks' foreground masses differ
    teacher.logits[0][0, :, :3] += 6.0
    return images, teacher


def rank_share(teacher: TeacherOutput, index) -> TeacherOutput:
    return TeacherOutput(
        {k: v[index] for k, v in teacher.features.items()},
        logits=[x[index] for x in teacher.logits], box_deltas=[x[index] for x in teacher.box_deltas],
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
        images, teacher = union_batch()
        index = slice(rank * 2, rank * 2 + 2)  # equal shares, as Detectron2 splits the batch
        model = DistributedDataParallel(make_model())
        model(images[index], rank_share(teacher, index)).backward()
        torch.save(gradients(model.module), os.path.join(out_dir, f"grad{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_distillation_gradient_is_the_same_on_2_processes_as_on_their_union(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    images, teacher = union_batch()
    single = make_model()
    single(images, teacher).backward()
    expected = gradients(single)
    assert {"c3.weight", "c4.weight", "cls.weight", "box.weight"} <= set(expected)
    for rank in range(2):
        got = torch.load(tmp_path / f"grad{rank}.pt")
        assert sorted(got) == sorted(expected)
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
