import math
from functools import cache

import pytest
import torch
import torch.nn.functional as F

from mit_semseg.models import DECODERS, ENCODERS, build_decoder, build_encoder
from mit_semseg.models.decoders.blocks import upsample

NUM_CLASS = 7
H, W = 65, 97


@cache
def declared(encoder_name):
    """(out_channels, strides) an encoder declares (its own tests check them against maps)."""
    encoder = build_encoder(encoder_name)
    return tuple(encoder.out_channels), tuple(encoder.strides)


def encoder_groups():
    """Encoder names grouped by what a decoder sees (widths and strides): one case per group."""
    groups = {}
    for name in ENCODERS.names():
        groups.setdefault(declared(name), []).append(name)
    return [pytest.param(names[0], id="+".join(names)) for names in groups.values()]


def fake_maps(encoder_name, batch=2, h=H, w=W):
    channels, strides = declared(encoder_name)
    return [torch.randn(batch, c, math.ceil(h / s), math.ceil(w / s))
            for c, s in zip(channels, strides)]


def output_stride(decoder_name, strides):
    return strides[0] if decoder_name.startswith("upernet") else strides[-1]


@pytest.mark.parametrize("encoder_name", encoder_groups())
@pytest.mark.parametrize("decoder_name", DECODERS.names())
def test_every_decoder_fits_every_encoder(decoder_name, encoder_name):
    channels, strides = declared(encoder_name)
    decoder = build_decoder(decoder_name, num_class=NUM_CLASS, in_channels=channels,
                            fc_dim=None).eval()
    stride = output_stride(decoder_name, strides)
    maps = fake_maps(encoder_name, batch=1)
    with torch.no_grad():
        logits = decoder.logits(maps)
        assert logits.shape == (1, NUM_CLASS, math.ceil(H / stride), math.ceil(W / stride))
        probs = decoder.predict(maps, (H, W))
    assert probs.shape == (1, NUM_CLASS, H, W)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, H, W))


@pytest.mark.parametrize("decoder_name", DECODERS.names())
def test_gradients_reach_every_decoder_parameter(decoder_name):
    channels, _ = declared("resnet18dilated")
    decoder = build_decoder(decoder_name, num_class=NUM_CLASS, in_channels=channels).train()
    maps = fake_maps("resnet18dilated", h=33, w=49)
    loss = decoder.logits(maps).logsumexp(1).mean()
    if decoder.deep_sup:
        loss = loss + decoder.aux_logits(maps).logsumexp(1).mean()
    loss.backward()
    params = list(decoder.named_parameters())
    assert [n for n, p in params if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_forward_keeps_the_original_contract():
    channels, _ = declared("resnet18dilated")
    maps = fake_maps("resnet18dilated")
    train_style = build_decoder("ppm_deepsup", fc_dim=512, num_class=NUM_CLASS).eval()
    main, aux = train_style(maps)
    torch.testing.assert_close(main, F.log_softmax(train_style.logits(maps), 1))
    torch.testing.assert_close(aux, F.log_softmax(train_style.aux_logits(maps), 1))
    infer_style = build_decoder("ppm_deepsup", fc_dim=512, num_class=NUM_CLASS,
                                use_softmax=True).eval()
    infer_style.load_state_dict(train_style.state_dict())
    probs = infer_style(maps, segSize=(H, W))
    torch.testing.assert_close(probs, F.softmax(upsample(train_style.logits(maps), (H, W)), 1))
    single = build_decoder("c1", fc_dim=512, num_class=NUM_CLASS).eval()
    torch.testing.assert_close(single(maps), F.log_softmax(single.logits(maps), 1))


def test_upernet_fast_pooling_equals_the_original_order_in_eval():
    channels, _ = declared("resnet50")
    decoder = build_decoder("upernet_lite", num_class=NUM_CLASS, in_channels=channels)
    decoder.fast_pooling = True
    for conv in decoder.ppm_conv:  # non-trivial statistics so the BatchNorm matters
        bn = conv[1]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    decoder.eval()
    conv5 = torch.randn(2, channels[-1], 5, 7)
    for pool, conv in zip(decoder.ppm_pooling, decoder.ppm_conv):
        with torch.no_grad():
            fast = decoder._pooling_branch(pool, conv, conv5)
            original = conv(upsample(pool(conv5), conv5.shape[2:]))
        torch.testing.assert_close(fast, original, atol=1e-5, rtol=1e-5)


def test_upernet_without_encoder_widths_explains_the_fix():
    decoder = build_decoder("upernet", fc_dim=512, num_class=NUM_CLASS).eval()
    with pytest.raises(ValueError, match="in_channels=encoder.out_channels"):
        decoder.logits(fake_maps("resnet18"))
    decoder = build_decoder("upernet", fc_dim=320, num_class=NUM_CLASS).eval()
    with pytest.raises(ValueError, match="in_channels=encoder.out_channels"):
        decoder.logits(fake_maps("mobilenetv2dilated"))


def test_fc_dim_must_match_in_channels():
    with pytest.raises(ValueError, match="fc_dim=2048 does not match .* 512"):
        build_decoder("c1", fc_dim=2048, num_class=NUM_CLASS, in_channels=[64, 128, 256, 512])


@pytest.mark.parametrize("decoder_name", ["c1_deepsup", "ppm_deepsup", "upernet_deepsup"])
def test_deep_sup_on_a_single_map_encoder_reads_that_map(decoder_name):
    # HRNetV2 gives one map; the original's aux head (conv_out[-2]) failed there in training.
    decoder = build_decoder(decoder_name, num_class=NUM_CLASS, fc_dim=None, in_channels=[32])
    decoder.eval()
    assert decoder.aux_index == -1 and decoder.cbr_deepsup[0].in_channels == 32
    conv5 = torch.randn(2, 32, 9, 13)
    with torch.no_grad():
        aux = decoder.aux_logits([conv5])
        expected = decoder.conv_last_deepsup(decoder.cbr_deepsup(conv5))
        assert decoder.logits([conv5]).shape == aux.shape == (2, NUM_CLASS, 9, 13)
    torch.testing.assert_close(aux, expected)
    # Two or more maps: the second-to-last one, as in the original.
    assert build_decoder(decoder_name, num_class=NUM_CLASS, fc_dim=None,
                         in_channels=[16, 32]).cbr_deepsup[0].in_channels == 16


def test_original_layout_deep_sup_on_one_map_is_explained():
    # Built the original's way (widths from fc_dim: [360, 720]) but fed HRNet's single map.
    decoder = build_decoder("c1_deepsup", fc_dim=720, num_class=NUM_CLASS).eval()
    with pytest.raises(ValueError, match="needs encoder map -2, but got 1 .*in_channels="):
        decoder.aux_logits([torch.randn(1, 720, 4, 4)])


def test_decoder_init_is_the_originals():
    decoder = build_decoder("ppm", fc_dim=64, num_class=NUM_CLASS)
    bn = decoder.conv_last[1]
    assert torch.all(bn.weight == 1) and torch.allclose(bn.bias, torch.full_like(bn.bias, 1e-4))
    conv = decoder.conv_last[0]  # Kaiming normal, fan-in: std = sqrt(2 / fan_in)
    fan_in = conv.in_channels * 9
    assert abs(conv.weight.std().item() - math.sqrt(2 / fan_in)) < 0.1 * math.sqrt(2 / fan_in)
