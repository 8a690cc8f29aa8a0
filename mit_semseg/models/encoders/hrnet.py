"""HRNetV2 encoder (one parametrised definition; registered as the original's ``hrnetv2`` = W48).

Contract: ``forward(x)`` returns a **single** map, as the original did: every resolution branch
of the last stage, bilinearly upsampled to the stride-4 branch and concatenated.

========== ================================== ================ ===========
name       branch widths                      ``out_channels`` ``strides``
========== ================================== ================ ===========
hrnetv2    48, 96, 192, 384 (W48)             [720]            [4]
========== ================================== ================ ===========

Layout (Sun et al., "High-Resolution Representations for Labeling Pixels and Regions", 2019):
a stem of two stride-2 3x3 convolutions (3->64->64, norm + ReLU each), ``layer1`` = bottleneck
blocks (64->256), then stages 2..4. Before stage ``k`` a ``transition{k-1}`` adapts the existing
branches and opens one more branch at half the resolution; each stage is a sequence of
multi-resolution modules, in which every branch runs basic blocks and the branches are then
exchanged ("fused") by summation: lower resolutions come up through a 1x1 conv + norm and
bilinear upsampling, higher ones go down through a chain of stride-2 3x3 conv + norm (ReLU
between the steps of the chain). Attribute names reproduce the original's state-dict keys.

The original built HRNet's BatchNorms with momentum 0.1, the default of ``nn.BatchNorm2d`` and
of this package's synchronized BatchNorms, so ``norm_layer(c)`` needs no extra argument. There is
no explicit initialisation (PyTorch's defaults), also as in the original.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..layers import NormLayer, conv_norm, upsample
from ..registry import ENCODERS
from .resnet import BasicBlock, Bottleneck

__all__ = ["HRNetV2Encoder", "hrnetv2_encoder", "HRNETV2_W48"]

# The W48 network of the original: branch widths, modules in stages 2..4, basic blocks per
# branch in every module, bottleneck blocks in layer1.
HRNETV2_W48 = {"widths": (48, 96, 192, 384), "stage_modules": (1, 4, 3),
               "blocks_per_branch": 4, "stem_blocks": 4}

STEM_WIDTH = 64
BOTTLENECK_EXPANSION = 4


def _downsampling_chain(in_ch: int, out_ch: int, steps: int, norm_layer: NormLayer,
                        final_relu: bool) -> nn.Sequential:
    """``steps`` stride-2 3x3 conv + norm (+ ReLU); only the last step changes the width."""
    layers = []
    for step in range(steps):
        last = step == steps - 1
        layers.append(conv_norm(in_ch, out_ch if last else in_ch, 3, 2, norm_layer,
                                relu=final_relu or not last))
    return nn.Sequential(*layers)


class HRModule(nn.Module):
    """One multi-resolution module: parallel basic-block branches, then the exchange.

    Args:
        widths: channels of each branch, highest resolution first (each branch halves the
            resolution of the previous one).
        num_blocks: basic blocks per branch.
        norm_layer: normalisation layer constructor.
    """

    def __init__(self, widths: Sequence[int], num_blocks: int, norm_layer: NormLayer) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"a multi-resolution module needs >= 2 branches, got {widths}")
        self.branches = nn.ModuleList(
            nn.Sequential(*(BasicBlock(w, w, w, 1, 1, 1, 1, None, norm_layer)
                            for _ in range(num_blocks)))
            for w in widths
        )
        fuse_layers = []
        for target, target_width in enumerate(widths):
            row: list[nn.Module | None] = []
            for source, source_width in enumerate(widths):
                if source > target:  # lower resolution: match the width, upsample in forward
                    row.append(conv_norm(source_width, target_width, 1, 1, norm_layer,
                                         relu=False))
                elif source < target:
                    row.append(_downsampling_chain(source_width, target_width, target - source,
                                                   norm_layer, final_relu=False))
                else:
                    row.append(None)  # the branch itself enters the sum unchanged
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers)
        self.relus = nn.ModuleList(nn.ReLU(inplace=True) for _ in widths)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Map one tensor per branch to one tensor per branch (same shapes)."""
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for target, row in enumerate(self.fuse_layers):
            total = None
            for source, (layer, x) in enumerate(zip(row, xs)):
                if layer is not None:
                    x = layer(x)
                    if source > target:
                        x = upsample(x, xs[target].shape[2:])
                total = x if total is None else total + x
            fused.append(self.relus[target](total))
        return fused


class HRNetV2Encoder(nn.Module):
    """HRNetV2: high-resolution branches kept through the network, concatenated at the end.

    Args:
        widths: branch widths, highest resolution first (W48: 48, 96, 192, 384; W18 and W32
            are ``(18, 36, 72, 144)`` and ``(32, 64, 128, 256)``). ``len(widths) - 1``
            multi-branch stages follow ``layer1``.
        stage_modules: number of multi-resolution modules in each of those stages.
        blocks_per_branch: basic blocks per branch in every module.
        stem_blocks: bottleneck blocks in ``layer1``.
        norm_layer: normalisation layer constructor, called with the channel count.

    Attributes:
        out_channels: ``[sum(widths)]`` (720 for W48).
        strides: ``[4]``.
    """

    def __init__(self, widths: Sequence[int] = HRNETV2_W48["widths"],
                 stage_modules: Sequence[int] = HRNETV2_W48["stage_modules"],
                 blocks_per_branch: int = HRNETV2_W48["blocks_per_branch"],
                 stem_blocks: int = HRNETV2_W48["stem_blocks"],
                 norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or len(stage_modules) != len(widths) - 1:
            raise ValueError(
                f"HRNetV2 needs >= 2 branch widths and one module count per stage after "
                f"layer1 (len(widths) - 1); got widths {widths}, stage_modules "
                f"{list(stage_modules)}"
            )
        self.pretrained_name = "hrnetv2"  # which ImageNet weights file fits (see pretrained.py)
        self.conv1 = nn.Conv2d(3, STEM_WIDTH, 3, stride=2, padding=1, bias=False)
        self.bn1 = norm_layer(STEM_WIDTH)
        self.conv2 = nn.Conv2d(STEM_WIDTH, STEM_WIDTH, 3, stride=2, padding=1, bias=False)
        self.bn2 = norm_layer(STEM_WIDTH)
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)

        layer1_width = STEM_WIDTH * BOTTLENECK_EXPANSION
        downsample = conv_norm(STEM_WIDTH, layer1_width, 1, 1, norm_layer, relu=False)
        self.layer1 = nn.Sequential(
            Bottleneck(STEM_WIDTH, STEM_WIDTH, layer1_width, 1, 1, 1, 1, downsample, norm_layer),
            *(Bottleneck(layer1_width, STEM_WIDTH, layer1_width, 1, 1, 1, 1, None, norm_layer)
              for _ in range(1, stem_blocks)),
        )

        previous = [layer1_width]
        for stage, num_modules in enumerate(stage_modules, start=2):
            current = widths[:stage]
            self.add_module(f"transition{stage - 1}",
                            self._transition(previous, current, norm_layer))
            self.add_module(f"stage{stage}", nn.Sequential(*(
                HRModule(current, blocks_per_branch, norm_layer) for _ in range(num_modules)
            )))
            previous = current
        self.num_stages = len(stage_modules)
        self.out_channels = [sum(widths)]
        self.strides = [4]

    @staticmethod
    def _transition(previous: list[int], current: list[int],
                    norm_layer: NormLayer) -> nn.ModuleList:
        """Per branch of the next stage: adapt an existing branch's width (``None`` when it
        already fits) or open a new one by downsampling the lowest-resolution branch."""
        layers: list[nn.Module | None] = []
        for index, width in enumerate(current):
            if index < len(previous):
                same = previous[index] == width
                layers.append(None if same else conv_norm(previous[index], width, 3, 1,
                                                           norm_layer, relu=True))
            else:
                layers.append(_downsampling_chain(previous[-1], width, index + 1 - len(previous),
                                                  norm_layer, final_relu=True))
        return nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, return_feature_maps: bool = True) -> list[torch.Tensor]:
        """Encode ``x`` (B, 3, H, W) into ``[(B, out_channels[0], ~H/4, ~W/4)]``.

        ``return_feature_maps`` is accepted for the original's interface; there is only one map
        either way.
        """
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        branches = [self.layer1(x)]  # (B, 256, H/4, W/4)
        for stage in range(2, self.num_stages + 2):
            transition = getattr(self, f"transition{stage - 1}")
            inputs = []
            for index, layer in enumerate(transition):
                if index < len(branches):
                    inputs.append(branches[index] if layer is None else layer(branches[index]))
                else:
                    inputs.append(layer(branches[-1]))
            branches = getattr(self, f"stage{stage}")(inputs)
        top = branches[0]
        return [torch.cat([top] + [upsample(b, top.shape[2:]) for b in branches[1:]], 1)]


def hrnetv2_encoder(norm_layer: NormLayer = nn.BatchNorm2d, output_stride: int = 4,
                    **spec) -> HRNetV2Encoder:
    """Build an :class:`HRNetV2Encoder` (the registered builder; W48 unless ``spec`` says).

    Raises:
        ValueError: ``output_stride`` is not 4 (HRNetV2's output resolution is fixed).
    """
    if output_stride != 4:
        raise ValueError(f"HRNetV2 has a fixed output_stride of 4, got {output_stride}")
    return HRNetV2Encoder(**{**HRNETV2_W48, **spec}, norm_layer=norm_layer)


ENCODERS.register("hrnetv2", hrnetv2_encoder)
