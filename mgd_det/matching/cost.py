"""Accumulation of the channel matching cost between a student and a teacher feature map."""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_feature_pair, check_finite, distributed_world_size


class ChannelCostTracker(nn.Module):
    """Sums the per-image cost ``2 - 2 <s_i, t_j>`` between unit-norm channel maps.

    For every image, each channel's spatial map is flattened and L2-normalised; the cost
    between student channel i and teacher channel j is the squared distance of the two unit
    vectors (in [0, 4]). Costs are summed over images into ``cost_sum`` [Cs, Ct] and the
    image count into ``num_images``, both on the features' device, so tracking needs no host
    copy per batch. An all-zero (dead) channel normalises to the zero vector: its cosine with
    anything is 0, hence a finite cost of 2.

    Args:
        num_student_channels, num_teacher_channels: Cs and Ct.
        persistent: whether the buffers go into ``state_dict`` (they are transient statistics
            of one assignment update, so owners usually pass False).
        name: how error messages refer to this tracker (e.g. its distillation position).
    """

    def __init__(
        self,
        num_student_channels: int,
        num_teacher_channels: int,
        persistent: bool = True,
        name: str = "ChannelCostTracker",
    ):
        super().__init__()
        if num_student_channels <= 0 or num_teacher_channels <= 0:
            raise ValueError(
                f"channel counts must be positive; got {num_student_channels}, {num_teacher_channels}"
            )
        self.num_student_channels = int(num_student_channels)
        self.num_teacher_channels = int(num_teacher_channels)
        self.name = name
        self.register_buffer(
            "cost_sum",
            torch.zeros(self.num_student_channels, self.num_teacher_channels, dtype=torch.float32),
            persistent=persistent,
        )
        self.register_buffer(
            "num_images", torch.zeros((), dtype=torch.float32), persistent=persistent
        )

    @staticmethod
    def _unit_channels(feat: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (C, N*H*W): each image's channel map scaled to unit L2 norm."""
        flat = feat.detach().float().flatten(2)
        flat = nn.functional.normalize(flat, dim=2)  # eps-safe: a zero map stays zero
        return flat.transpose(0, 1).reshape(flat.shape[1], -1)

    @torch.no_grad()
    def update(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> None:
        """Add one batch of (N, Cs, H, W) student and (N, Ct, H, W) teacher features."""
        check_feature_pair(
            student_feat,
            teacher_feat,
            self.num_student_channels,
            self.num_teacher_channels,
            self.name,
        )
        # No finiteness check per batch (it would read back every feature map): a NaN/Inf
        # anywhere propagates into cost_sum, which mean_cost() checks once per solve.
        s = self._unit_channels(student_feat).to(self.cost_sum.device)
        t = self._unit_channels(teacher_feat).to(self.cost_sum.device)
        num = student_feat.shape[0]
        # One matmul over (images x pixels) gives the sum over images of the cosines.
        self.cost_sum.add_(s @ t.T, alpha=-2.0).add_(2.0 * num)
        self.num_images.add_(num)

    def reset(self) -> None:
        self.cost_sum.zero_()
        self.num_images.zero_()

    def all_reduce(self) -> None:
        """Sum the statistics over all processes; a no-op without a multi-process group."""
        if distributed_world_size() > 1:
            torch.distributed.all_reduce(self.cost_sum, op=torch.distributed.ReduceOp.SUM)
            torch.distributed.all_reduce(self.num_images, op=torch.distributed.ReduceOp.SUM)

    def mean_cost(self) -> torch.Tensor:
        """The mean cost per image, [Cs, Ct]. Raises RuntimeError if nothing was tracked."""
        if not bool(self.num_images > 0):  # host read: called once per solve, not per step
            raise RuntimeError(f"{self.name}: no images were tracked since the last reset")
        check_finite(
            self.cost_sum,
            f"{self.name}: matching cost (NaN/Inf in the tracked student or teacher features)",
        )
        return self.cost_sum / self.num_images
