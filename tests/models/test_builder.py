import pytest
import torch

import mit_semseg.models.builder as builder
from mit_semseg.models import build_segmentation_model


def test_fc_dim_is_checked_against_the_encoder_before_any_weights_are_read(tmp_path):
    with pytest.raises(ValueError, match="MODEL.fc_dim=2048 .* set MODEL.fc_dim to 512"):
        build_segmentation_model("resnet18dilated", "ppm", 5, fc_dim=2048,
                                 weights_encoder=str(tmp_path / "missing.pth"))
    assert build_segmentation_model("resnet18dilated", "ppm", 5, fc_dim=512).decoder.in_channels[
        -1] == 512


def test_weights_files_round_trip_and_mismatches_name_the_file(tmp_path):
    source = build_segmentation_model("mobilenetv2dilated", "c1_deepsup", 5)
    torch.save(source.encoder.state_dict(), tmp_path / "enc.pth")
    torch.save(source.decoder.state_dict(), tmp_path / "dec.pth")
    loaded = build_segmentation_model("mobilenetv2dilated", "c1_deepsup", 5,
                                      weights_encoder=str(tmp_path / "enc.pth"),
                                      weights_decoder=str(tmp_path / "dec.pth"))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(RuntimeError, match=r"c1 decoder weights file .*dec\.pth does not fit"):
        build_segmentation_model("mobilenetv2dilated", "c1", 5,
                                 weights_decoder=str(tmp_path / "dec.pth"))


@pytest.mark.parametrize("pretrained,weights,expected_calls", [
    (False, False, 0), (True, False, 1), (True, True, 0),
])
def test_imagenet_weights_only_when_pretrained_and_no_encoder_file(
        monkeypatch, tmp_path, pretrained, weights, expected_calls):
    calls = []
    monkeypatch.setattr(builder, "load_pretrained", lambda encoder, **_: calls.append(encoder))
    path = tmp_path / "enc.pth"
    torch.save(build_segmentation_model("resnet18", "c1", 3).encoder.state_dict(), path)
    build_segmentation_model("resnet18", "c1", 3, pretrained=pretrained,
                             weights_encoder=str(path) if weights else "")
    assert len(calls) == expected_calls
