"""A dense (RetinaNet-style) teacher head on one level, shared by the KD/BOX tests."""
import torch


def dense_teacher_head(num_foreground: int, num_background: int, classes: int, foreground_p: float, seed: int = 0):
    """(logits (1, classes, 1, anchors), deltas (1, 4, 1, anchors)), one anchor per location:
    ``num_foreground`` anchors at ``foreground_p`` for class 1, the background ones at p 0.05-0.3
    for class 0 (a realistic teacher's crowd of low-confidence anchors), 0.01-0.03 elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    anchors = num_foreground + num_background
    p = 0.01 + 0.02 * torch.rand(anchors, classes, generator=gen)
    p[num_foreground:, 0] = 0.05 + 0.25 * torch.rand(num_background, generator=gen)
    p[:num_foreground, 1] = foreground_p
    logits = torch.logit(p).t().reshape(1, classes, 1, anchors)
    deltas = torch.randn(1, 4, 1, anchors, generator=gen)
    return logits, deltas
