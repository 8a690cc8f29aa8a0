"""Fixtures of the inference tests."""

import pytest
import torch

from mit_semseg.models import build_segmentation_model

NUM_CLASS = 7


@pytest.fixture
def model():
    module = build_segmentation_model("resnet18dilated", "c1_deepsup", NUM_CLASS).eval()
    # non-trivial eval statistics, so that BatchNorm really takes part in the comparison
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return module
