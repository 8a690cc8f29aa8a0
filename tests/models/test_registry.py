import pytest
import torch.nn as nn

from mit_semseg.models import (
    DECODERS,
    ENCODERS,
    ModelBuilder,
    build_decoder,
    build_encoder,
    list_decoders,
    list_encoders,
)
from mit_semseg.models.registry import Registry

EXPECTED_ENCODERS = sorted(
    [f"{family}{suffix}" for family in ("resnet18", "resnet50", "resnet101", "resnext101")
     for suffix in ("", "dilated", "dilated16")]
    + ["mobilenetv2dilated", "mobilenetv2dilated16", "hrnetv2"]
)
EXPECTED_DECODERS = sorted(
    ["c1", "c1_deepsup", "ppm", "ppm_deepsup", "upernet", "upernet_lite", "upernet_deepsup"]
)


def test_encoder_names_are_pinned():
    assert list_encoders() == EXPECTED_ENCODERS == ENCODERS.names()


def test_decoder_names_are_pinned():
    assert list_decoders() == EXPECTED_DECODERS == DECODERS.names()


def test_original_arch_strings_are_all_registered():
    original = ["mobilenetv2dilated", "resnet18", "resnet18dilated", "resnet50",
                "resnet50dilated", "resnet101", "resnet101dilated", "resnext101", "hrnetv2"]
    assert all(name in ENCODERS for name in original)
    assert all(name in DECODERS for name in ["c1", "c1_deepsup", "ppm", "ppm_deepsup",
                                             "upernet", "upernet_lite"])


@pytest.mark.parametrize("build", [
    lambda: build_encoder("resnet34"),
    lambda: ModelBuilder.build_encoder("resnet34dilated"),
])
def test_unknown_encoder_lists_valid_names(build):
    with pytest.raises(KeyError) as info:
        build()
    message = str(info.value)
    assert "resnet34" in message
    assert all(name in message for name in EXPECTED_ENCODERS)


def test_unknown_decoder_lists_valid_names():
    with pytest.raises(KeyError) as info:
        build_decoder("fcn", fc_dim=512, num_class=5)
    assert all(name in str(info.value) for name in EXPECTED_DECODERS)


def test_names_are_case_insensitive():
    assert type(build_encoder("ResNet18Dilated")).__name__ == "ResNetEncoder"


def test_duplicate_registration_is_refused():
    registry = Registry("thing")
    registry.register("a", nn.Identity)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("A", nn.Identity)
    assert isinstance(registry.build("a"), nn.Identity)
