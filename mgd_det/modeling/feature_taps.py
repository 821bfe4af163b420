"""Read distillation features out of a Detectron2 backbone without touching its code.

Two kinds of positions, named as Detectron2 names them:

* ``res2`` .. ``res5``: the output of the *last block* of a ResNet stage, taken **before**
  its final ReLU. Detectron2's blocks end with ``out += shortcut; F.relu_(out)`` (in place),
  so a forward hook on the block only ever sees post-ReLU values. Instead we hook the
  block's last conv (and its projection shortcut, if any) and form ``conv_out + shortcut``
  ourselves, right before the block adds them in place. That costs one element-wise add per
  tapped position and keeps autograd exact (the in-place add that follows does not touch
  our new tensor).
* ``p2`` .. ``p7``: FPN outputs, read from the backbone's returned dict (no ReLU there).

Taps only record while :meth:`FeatureTaps.capture` is active, so inference pays nothing.
"""
import contextlib
import logging
from typing import Dict, Iterator, List, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _find_resnet(backbone: nn.Module) -> nn.Module:
    """The ResNet bottom-up network of a backbone (the backbone itself, or FPN's bottom_up)."""
    for candidate in (backbone, getattr(backbone, "bottom_up", None)):
        if candidate is not None and hasattr(candidate, "stage_names") and hasattr(candidate, "stages"):
            return candidate
    raise ValueError(
        f"Backbone {type(backbone).__name__} has no ResNet bottom-up network; MGD taps "
        "'resN' positions only on Detectron2 ResNet / ResNet-FPN backbones."
    )


def _last_conv(block: nn.Module) -> nn.Module:
    """The conv (with its norm) whose output the block adds to the shortcut."""
    for name in ("conv3", "conv2"):  # bottleneck, basic block
        conv = getattr(block, name, None)
        if conv is not None:
            return conv
    raise ValueError(f"Unsupported ResNet block type {type(block).__name__} (no conv3/conv2)")


def _fpn_names(backbone: nn.Module) -> List[str]:
    if hasattr(backbone, "bottom_up"):
        return list(backbone.output_shape().keys())
    return []


class FeatureTaps:
    """Records the named positions of one backbone during :meth:`capture`."""

    def __init__(self, backbone: nn.Module, positions: List[str], owner: str):
        self.backbone = backbone
        self.positions = list(positions)
        self.owner = owner
        self._active: Optional[Dict[str, torch.Tensor]] = None
        self._handles = []
        available = self.available_positions(backbone)
        unknown = [p for p in self.positions if p not in available]
        if unknown:
            raise ValueError(
                f"{owner}: distillation position(s) {unknown} do not exist in this backbone; "
                f"available positions are {available}. Fix MGD.POSITIONS."
            )
        for name in self.positions:
            if name.startswith("res"):
                self._hook_stage_end(name)
        if any(p.startswith("p") for p in self.positions):
            self._handles.append(backbone.register_forward_hook(self._on_backbone_output))

    @staticmethod
    def available_positions(backbone: nn.Module) -> List[str]:
        resnet = _find_resnet(backbone)
        return list(resnet.stage_names) + _fpn_names(backbone)

    def _last_block(self, stage_name: str) -> nn.Module:
        return getattr(_find_resnet(self.backbone), stage_name)[-1]

    def channels(self, name: str) -> int:
        """Channel count of a position, read from the model itself."""
        if name.startswith("res"):
            return int(self._last_block(name).out_channels)
        return int(self.backbone.output_shape()[name].channels)

    def norm_before_relu(self, name: str) -> Optional[nn.Module]:
        """The norm layer ending the residual branch (its affine params give the margin)."""
        if not name.startswith("res"):
            return None
        return getattr(_last_conv(self._last_block(name)), "norm", None)

    def _hook_stage_end(self, name: str) -> None:
        block = self._last_block(name)
        conv = _last_conv(block)
        state = {}

        def remember_input(_module, inputs):
            if self._active is not None:
                state["x"] = inputs[0]

        def on_conv(_module, _inputs, output):
            if self._active is None:
                return
            if block.shortcut is None:  # identity shortcut: block input is added next
                self._active[name] = output + state.pop("x")
            else:
                state["conv"] = output

        def on_shortcut(_module, _inputs, output):
            if self._active is not None:
                state.pop("x", None)
                self._active[name] = state.pop("conv") + output

        self._handles.append(block.register_forward_pre_hook(remember_input))
        self._handles.append(conv.register_forward_hook(on_conv))
        if block.shortcut is not None:
            self._handles.append(block.shortcut.register_forward_hook(on_shortcut))

    def _on_backbone_output(self, _module, _inputs, outputs):
        if self._active is None:
            return
        for name in self.positions:
            if name.startswith("p"):
                self._active[name] = outputs[name]

    @contextlib.contextmanager
    def capture(self) -> Iterator[Dict[str, torch.Tensor]]:
        """Collect this forward's features into the yielded dict."""
        self._active = feats = {}
        try:
            yield feats
        finally:
            self._active = None
        missing = [p for p in self.positions if p not in feats]
        if missing:
            raise RuntimeError(
                f"{self.owner}: the forward pass did not produce position(s) {missing}; "
                "is the backbone run inside capture()?"
            )

    def smallest_network(self) -> nn.Module:
        """The part of the backbone that must run to produce every position.

        Only ``resN`` positions: the ResNet alone (an FPN's lateral and output convs would be
        wasted work, e.g. for a frozen teacher whose FPN outputs nobody reads). Any ``pN``
        position: the whole backbone.
        """
        if all(p.startswith("res") for p in self.positions):
            return _find_resnet(self.backbone)
        return self.backbone

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
