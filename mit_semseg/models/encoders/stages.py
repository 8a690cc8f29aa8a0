"""Turning stage strides into (stride, dilation) pairs for a requested output stride."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["StageStep", "dilation_plan"]


class StageStep(NamedTuple):
    """How one stage downsamples.

    Attributes:
        stride: stride of the stage's first block (1 once the output stride is reached).
        dilation_first: dilation of the first block's strided 3x3 convolution.
        dilation: dilation of every other 3x3 convolution in the stage.
        output_stride: total downsampling after the stage.
    """

    stride: int
    dilation_first: int
    dilation: int
    output_stride: int


def dilation_plan(stage_strides: list[int], input_stride: int,
                  output_stride: int) -> list[StageStep]:
    """Replace strides beyond ``output_stride`` by dilation, as the original's surgery did.

    A stage that would push the total stride past ``output_stride`` keeps stride 1 and doubles
    the dilation (per stride factor); its first block's strided convolution keeps the previous
    dilation. This reproduces the original's ``_nostride_dilate`` rule (``dilate // 2`` on the
    formerly strided 3x3 convolution, ``dilate`` on the others).

    Args:
        stage_strides: stride of each stage's first block in the undilated network.
        input_stride: total stride before the first stage.
        output_stride: requested total stride (8, 16 or 32).

    Returns:
        One :class:`StageStep` per stage.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    steps = []
    current, dilation = input_stride, 1
    for stride in stage_strides:
        previous = dilation
        if current * stride > output_stride:
            dilation *= stride
            stride = 1
        current *= stride
        steps.append(StageStep(stride, previous, dilation, current))
    return steps
