import pytest
import torch
import torch.nn as nn

from mit_semseg.models import (
    DECODERS,
    ENCODERS,
    build_decoder,
    build_encoder,
    build_segmentation_model,
)
from mit_semseg.models.decoders import SegmentationDecoder
from mit_semseg.models.registry import Registry

# The original's arch strings: its configs and checkpoints name them, so they must stay.
ORIGINAL_ENCODERS = ["mobilenetv2dilated", "resnet18", "resnet18dilated", "resnet50",
                     "resnet50dilated", "resnet101", "resnet101dilated", "resnext101", "hrnetv2"]
ORIGINAL_DECODERS = ["c1", "c1_deepsup", "ppm", "ppm_deepsup", "upernet", "upernet_lite"]


def test_original_arch_strings_are_all_registered():
    assert [name for name in ORIGINAL_ENCODERS if name not in ENCODERS] == []
    assert [name for name in ORIGINAL_DECODERS if name not in DECODERS] == []


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(KeyError) as info:
        build_encoder("resnet34")
    message = str(info.value)
    assert "resnet34" in message
    assert all(name in message for name in ENCODERS.names())


def test_unknown_decoder_lists_valid_names():
    with pytest.raises(KeyError) as info:
        build_decoder("fcn", 5, in_channels=[8])
    assert all(name in str(info.value) for name in DECODERS.names())


def test_names_are_case_insensitive():
    assert type(build_encoder("ResNet18Dilated")).__name__ == "ResNetEncoder"


def test_duplicate_registration_is_refused():
    registry = Registry("thing")
    registry.register("a", nn.Identity)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("A", nn.Identity)
    assert isinstance(registry.build("a"), nn.Identity)


def test_a_module_missing_a_declared_fact_is_refused():
    registry = Registry("encoder", declares=("out_channels", "strides"))

    class Forgetful(nn.Module):
        out_channels = [8]

    registry.register("forgetful", Forgetful)
    with pytest.raises(TypeError, match="'forgetful' built a Forgetful without strides; every "
                                        "encoder must declare out_channels, strides"):
        registry.build("forgetful")


def test_build_gives_every_module_the_originals_checkpoint_layout():
    # A module that knows nothing about the original's SyncBN buffers gets them from build().
    registry = Registry("thing")
    registry.register("plain", lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
    keys = set(registry.build("plain").state_dict())
    assert {"1._tmp_running_mean", "1._tmp_running_var", "1._running_iter"} <= keys



def test_a_new_decoder_is_one_class_and_its_registration(scratch_registries):
    class Linear(SegmentationDecoder):
        """1x1 classifier on the first map (what docs/models.md says a decoder needs)."""

        output_index = 0

        def __init__(self, num_class, in_channels, norm_layer=nn.BatchNorm2d):
            super().__init__(num_class, in_channels, None, deep_sup=False)
            self.norm = norm_layer(in_channels[0])
            self.classify = nn.Conv2d(in_channels[0], num_class, 1)

        def forward(self, conv_out):
            return self.classify(self.norm(self._check_map(conv_out, 0)))

    DECODERS.register("linear", Linear)
    model = build_segmentation_model("resnet18", "linear", 4, deep_sup_scale=0.4)
    assert isinstance(model.decoder, Linear) and model.output_stride == 4
    assert "norm._running_iter" in model.decoder.state_dict()
    loss, _ = model.train()({"img_data": torch.randn(2, 3, 32, 32),
                             "seg_label": torch.randint(0, 4, (2, 8, 8))})
    assert torch.isfinite(loss)
