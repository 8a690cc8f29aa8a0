"""TrainedModel: loading a trained model's weight files for inference."""

import pytest
import torch
from torch import nn

from mit_semseg.inference.predict import predict_probs
from mit_semseg.inference.trained_model import TrainedModel

NUM_CLASS = 5
CPU = torch.device("cpu")


def test_load_missing_checkpoint_names_files(tmp_path):
    (tmp_path / "encoder_epoch_3.pth").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="decoder_epoch_3.pth") as info:
        TrainedModel("resnet18dilated", "c1", NUM_CLASS, tmp_path, "epoch_3.pth").load(CPU)
    assert "encoder_epoch_3.pth" not in str(info.value)


def test_load_narrow_encoder_with_upernet(tmp_path):
    from mit_semseg.models import build_segmentation_model

    trained = build_segmentation_model("resnet18dilated", "upernet", NUM_CLASS)
    torch.save(trained.encoder.state_dict(), tmp_path / "encoder_epoch_1.pth")
    torch.save(trained.decoder.state_dict(), tmp_path / "decoder_epoch_1.pth")
    model = TrainedModel("resnet18dilated", "upernet", NUM_CLASS, tmp_path, "epoch_1.pth",
                         fc_dim=512, fast_inference=False)
    loaded = model.load(CPU)
    image = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        probs = loaded({"img_data": image}, segSize=(40, 56))
    assert probs.shape == (1, NUM_CLASS, 40, 56)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 40, 56))


def test_fast_inference_folds_batchnorm_and_predicts_the_same(tmp_path):
    from mit_semseg.models import build_segmentation_model

    trained = build_segmentation_model("resnet18dilated", "ppm_deepsup", NUM_CLASS)
    torch.save(trained.encoder.state_dict(), tmp_path / "encoder_epoch_1.pth")
    torch.save(trained.decoder.state_dict(), tmp_path / "decoder_epoch_1.pth")
    probs, modules = {}, {}
    image = [torch.randn(1, 3, 48, 64), torch.randn(1, 3, 64, 80)]
    for fast in (False, True):
        model = TrainedModel("resnet18dilated", "ppm_deepsup", NUM_CLASS, tmp_path,
                             "epoch_1.pth", fc_dim=512, fast_inference=fast)
        modules[fast] = model.load(CPU)
        probs[fast] = predict_probs(modules[fast], image, (50, 70), CPU)
    assert not modules[True].training
    batchnorms = {fast: sum(isinstance(m, nn.BatchNorm2d) for m in modules[fast].modules())
                  for fast in (False, True)}
    assert batchnorms[True] == 0 < batchnorms[False]  # the deep-supervision head is dropped
    torch.testing.assert_close(probs[True], probs[False], rtol=0, atol=1e-5)


def _save_c1_weights(folder):
    from mit_semseg.models import build_segmentation_model

    trained = build_segmentation_model("resnet18dilated", "c1", NUM_CLASS)
    torch.save(trained.encoder.state_dict(), folder / "encoder_epoch_1.pth")
    torch.save(trained.decoder.state_dict(), folder / "decoder_epoch_1.pth")


def test_fast_inference_is_on_unless_switched_off(tmp_path):
    # the library default follows the config's MODEL.fast_inference (it once fell back to off)
    from mit_semseg.config import get_cfg_defaults

    _save_c1_weights(tmp_path)
    model = TrainedModel("resnet18dilated", "c1", NUM_CLASS, tmp_path, "epoch_1.pth")
    assert model.fast_inference is get_cfg_defaults().MODEL.fast_inference is True
    loaded = model.load(CPU)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())


def test_load_rejects_a_wrong_fc_dim(tmp_path):
    _save_c1_weights(tmp_path)
    model = TrainedModel("resnet18dilated", "c1", NUM_CLASS, tmp_path, "epoch_1.pth",
                         fc_dim=2048)
    with pytest.raises(ValueError, match="fc_dim=2048 .* 512"):
        model.load(CPU)


