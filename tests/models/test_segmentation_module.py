import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mit_semseg.models import (
    SegmentationModule,
    build_decoder,
    build_encoder,
    build_segmentation_model,
)
from mit_semseg.models.layers import upsample
from mit_semseg.models.segmentation_module import pixel_accuracy

NUM_CLASS = 5


def batch(h, w, stride, batch_size=2):
    label = torch.randint(-1, NUM_CLASS, (batch_size, -(-h // stride), -(-w // stride)))
    return {"img_data": torch.randn(batch_size, 3, h, w), "seg_label": label}


def without_dropout(model):
    # Without dropout the loss can be recomputed independently from the same weights.
    for m in model.modules():
        if isinstance(m, nn.Dropout2d):
            m.p = 0.0
    return model


@pytest.mark.parametrize("encoder_name,decoder_name", [
    ("resnet18dilated", "ppm_deepsup"),
    ("mobilenetv2dilated", "upernet_deepsup"),
    ("resnet18", "c1_deepsup"),  # aux map at stride 16, main at 32
])
def test_train_loss_is_cross_entropy_and_reaches_every_parameter(encoder_name, decoder_name):
    model = without_dropout(build_segmentation_model(encoder_name, decoder_name, NUM_CLASS,
                                                     deep_sup_scale=0.3)).train()
    feed = batch(33, 49, model.output_stride)
    loss, acc = model(feed)
    assert loss.dim() == 0 and acc.dim() == 0 and 0 <= acc.item() <= 1
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []

    with torch.no_grad():
        maps = model.encoder(feed["img_data"])
        logits = model.decoder(maps)
        aux = upsample(model.decoder.aux_logits(maps), logits.shape[2:])
    expected = (F.cross_entropy(logits, feed["seg_label"], ignore_index=-1)
                + 0.3 * F.cross_entropy(aux, feed["seg_label"], ignore_index=-1))
    # Batch statistics differ between the two passes only by momentum updates (not used here).
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("deep_sup_scale", [None, 0.4])
def test_no_aux_loss_without_deep_supervision_whatever_the_scale(deep_sup_scale):
    # The original's scripts pass a scale only for *_deepsup decoders; the builder always does.
    encoder = build_encoder("resnet18dilated")
    decoder = build_decoder("ppm", NUM_CLASS, in_channels=encoder.out_channels)
    model = without_dropout(SegmentationModule(encoder, decoder, None, deep_sup_scale)).train()
    feed = batch(33, 33, 8)
    loss, _ = model(feed)
    with torch.no_grad():
        logits = decoder(encoder(feed["img_data"]))
    torch.testing.assert_close(loss.detach(),
                               F.cross_entropy(logits, feed["seg_label"], ignore_index=-1),
                               atol=1e-5, rtol=1e-5)


def test_deep_supervision_without_a_scale_is_refused_in_training_only():
    encoder = build_encoder("resnet18dilated")
    decoder = build_decoder("c1_deepsup", NUM_CLASS, in_channels=encoder.out_channels)
    model = SegmentationModule(encoder, decoder, nn.NLLLoss(ignore_index=-1))  # the original's
    with torch.no_grad():  # eval.py call with a *_deepsup decoder: fine
        assert model.eval()({"img_data": torch.randn(1, 3, 32, 32)}, segSize=(9, 9)).shape == (
            1, NUM_CLASS, 9, 9)
    with pytest.raises(ValueError, match="deep_sup_scale is None.*TRAIN.deep_sup_scale"):
        model.train()(batch(32, 32, 8))
    with pytest.raises(ValueError, match="deep_sup_scale must be >= 0"):
        SegmentationModule(encoder, decoder, None, -0.4)


def test_pixel_accuracy_counts_labelled_pixels_only():
    pred = torch.zeros(1, 3, 2, 2)
    pred[0, 2] = 1.0  # predicts class 2 everywhere
    label = torch.tensor([[[2, 0], [-1, 2]]])
    assert pixel_accuracy(pred, label).item() == pytest.approx(2 / 3)


def test_eval_returns_probabilities_at_seg_size():
    model = build_segmentation_model("resnet18dilated", "c1", NUM_CLASS).eval()
    images = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        probs = model({"img_data": images}, segSize=(70, 50))
        logits = model.decoder(model.encoder(images))
    assert probs.shape == (1, NUM_CLASS, 70, 50)
    torch.testing.assert_close(probs, F.softmax(upsample(logits, (70, 50)), dim=1))


def test_a_one_element_list_is_accepted():
    model = build_segmentation_model("resnet18dilated", "c1", NUM_CLASS).eval()
    feed = batch(33, 33, 8)
    with torch.no_grad():
        torch.testing.assert_close(model([feed]), model(feed))
        with pytest.raises(ValueError, match="UserScatteredDataParallel"):
            model([feed, feed])


@pytest.mark.parametrize("decoder_name,stride", [("c1", 8), ("upernet_lite", 4)])
def test_output_stride_comes_from_what_the_parts_declare(decoder_name, stride):
    model = build_segmentation_model("resnet18dilated", decoder_name, NUM_CLASS)
    assert model.output_stride == stride
    with pytest.raises(ValueError, match=f"segm_downsampling_rate to the model's output stride "
                                         f"{stride}"):
        model(batch(64, 64, stride * 2))


def test_upernet_works_with_small_encoders():
    model = build_segmentation_model("resnet18", "upernet", NUM_CLASS, fc_dim=512).train()
    loss, _ = model(batch(33, 49, 4))
    assert torch.isfinite(loss)
