"""ModelBuilder, the original 1.0.0's model-building interface."""


import pytest
import torch

import mit_semseg.models


def test_the_originals_model_imports_work():
    from mit_semseg.models import ModelBuilder, SegmentationModule
    from mit_semseg.models.legacy import ModelBuilder as defined

    assert ModelBuilder is defined and SegmentationModule.__module__.startswith("mit_semseg")
    with pytest.raises(AttributeError, match="no attribute 'ModelBulder'"):
        _ = mit_semseg.models.ModelBulder


def test_model_builder_builds_the_originals_layout_and_loads_its_files(tmp_path):
    from mit_semseg.models import ModelBuilder, SegmentationModule, build_decoder, build_encoder

    torch.save(build_encoder("resnet18dilated").state_dict(), tmp_path / "enc.pth")
    torch.save(build_decoder("ppm_deepsup", 6, fc_dim=512).state_dict(), tmp_path / "dec.pth")
    # The original's eval.py calls, positional and by keyword.
    encoder = ModelBuilder.build_encoder("resnet18dilated", 512, str(tmp_path / "enc.pth"))
    decoder = ModelBuilder.build_decoder(arch="ppm_deepsup", fc_dim=512, num_class=6,
                                         weights=str(tmp_path / "dec.pth"), use_softmax=True)
    assert decoder.in_channels == [256, 512]
    model = SegmentationModule(encoder, decoder, torch.nn.NLLLoss(ignore_index=-1)).eval()
    with torch.no_grad():
        probs = model({"img_data": torch.randn(1, 3, 32, 32)}, segSize=(20, 20))
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 20, 20))
    with pytest.raises(RuntimeError, match="enc.pth"):  # strict, naming the file
        ModelBuilder.build_decoder("c1", 512, 6, str(tmp_path / "enc.pth"))


def test_model_builder_checks_fc_dim_against_given_widths():
    from mit_semseg.models import ModelBuilder

    widths = [64, 128, 256, 512]
    assert ModelBuilder.build_decoder("upernet_lite", 512, 6,
                                      in_channels=widths).in_channels == widths
    with pytest.raises(ValueError, match="MODEL.fc_dim=2048 .* set MODEL.fc_dim to 512"):
        ModelBuilder.build_decoder("upernet_lite", 2048, 6, in_channels=widths)


def test_unknown_arch_through_model_builder_lists_valid_names():
    from mit_semseg.models import ENCODERS, ModelBuilder

    with pytest.raises(KeyError) as info:
        ModelBuilder.build_encoder("resnet34dilated")
    assert all(name in str(info.value) for name in ENCODERS.names())


def test_weights_init_is_the_originals_decoder_init():
    from mit_semseg.models import ModelBuilder

    module = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3), torch.nn.BatchNorm2d(64))
    module.apply(ModelBuilder.weights_init)
    assert torch.all(module[1].weight == 1) and torch.allclose(module[1].bias,
                                                                torch.full((64,), 1e-4))
    assert module[0].weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
