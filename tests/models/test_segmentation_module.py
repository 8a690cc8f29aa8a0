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
from mit_semseg.models.decoders.blocks import upsample

NUM_CLASS = 5


def batch(h, w, stride, batch_size=2):
    label = torch.randint(-1, NUM_CLASS, (batch_size, -(-h // stride), -(-w // stride)))
    return {"img_data": torch.randn(batch_size, 3, h, w), "seg_label": label}


@pytest.mark.parametrize("encoder_name,decoder_name", [
    ("resnet18dilated", "ppm_deepsup"),
    ("mobilenetv2dilated", "upernet_deepsup"),
    ("resnet18", "c1_deepsup"),  # aux map at stride 16, main at 32
])
def test_train_loss_is_cross_entropy_and_reaches_every_parameter(encoder_name, decoder_name):
    model = build_segmentation_model(encoder_name, decoder_name, NUM_CLASS, deep_sup_scale=0.4)
    model.train()
    # Without dropout the loss can be recomputed independently from the same weights.
    for m in model.modules():
        if isinstance(m, nn.Dropout2d):
            m.p = 0.0
    stride = 4 if decoder_name.startswith("upernet") else model.encoder.strides[-1]
    feed = batch(33, 49, stride)
    loss, acc = model(feed)
    assert loss.dim() == 0 and acc.dim() == 0 and 0 <= acc.item() <= 1
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []

    with torch.no_grad():
        maps = model.encoder(feed["img_data"])
        logits = model.decoder.logits(maps)
        aux = upsample(model.decoder.aux_logits(maps), logits.shape[2:])
    expected = (F.cross_entropy(logits, feed["seg_label"], ignore_index=-1)
                + 0.4 * F.cross_entropy(aux, feed["seg_label"], ignore_index=-1))
    # Batch statistics differ between the two passes only by momentum updates (not used here).
    torch.testing.assert_close(loss.detach(), expected, atol=1e-5, rtol=1e-5)


def test_pixel_accuracy_counts_labelled_pixels_only():
    pred = torch.zeros(1, 3, 2, 2)
    pred[0, 2] = 1.0  # predicts class 2 everywhere
    label = torch.tensor([[[2, 0], [-1, 2]]])
    assert SegmentationModule.pixel_acc(pred, label).item() == pytest.approx(2 / 3)


def test_eval_returns_probabilities_at_seg_size():
    model = build_segmentation_model("resnet18dilated", "c1", NUM_CLASS).eval()
    with torch.no_grad():
        probs = model({"img_data": torch.randn(1, 3, 65, 97)}, segSize=(70, 50))
    assert probs.shape == (1, NUM_CLASS, 70, 50)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 70, 50))


def test_a_one_element_list_is_accepted():
    model = build_segmentation_model("resnet18dilated", "c1", NUM_CLASS).eval()
    feed = batch(33, 33, 8)
    with torch.no_grad():
        torch.testing.assert_close(model([feed]), model(feed))
        with pytest.raises(ValueError, match="UserScatteredDataParallel"):
            model([feed, feed])


def test_label_size_mismatch_is_explained():
    model = build_segmentation_model("resnet18dilated", "c1", NUM_CLASS).eval()
    feed = batch(64, 64, 4)
    with pytest.raises(ValueError, match="segm_downsampling_rate"):
        model(feed)


def test_deep_sup_scale_needs_a_deep_sup_decoder():
    encoder = build_encoder("resnet18dilated")
    decoder = build_decoder("c1", fc_dim=512, num_class=NUM_CLASS)
    with pytest.raises(ValueError, match="deep-supervision decoder"):
        SegmentationModule(encoder, decoder, nn.NLLLoss(ignore_index=-1), deep_sup_scale=0.4)


def test_fc_dim_is_checked_against_the_encoder():
    with pytest.raises(ValueError, match="fc_dim=2048 .* 512"):
        build_segmentation_model("resnet18dilated", "ppm", NUM_CLASS, fc_dim=2048)


def test_upernet_works_with_small_encoders():
    model = build_segmentation_model("resnet18", "upernet", NUM_CLASS, fc_dim=512).train()
    loss, _ = model(batch(33, 49, 4))
    assert torch.isfinite(loss)
