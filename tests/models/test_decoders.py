import math
from functools import cache

import pytest
import torch

from mit_semseg.models import DECODERS, ENCODERS, build_decoder, build_encoder
from mit_semseg.models.layers import upsample

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


@pytest.mark.parametrize("encoder_name", encoder_groups())
@pytest.mark.parametrize("decoder_name", DECODERS.names())
def test_every_decoder_fits_every_encoder(decoder_name, encoder_name):
    channels, strides = declared(encoder_name)
    decoder = build_decoder(decoder_name, NUM_CLASS, in_channels=channels).eval()
    # The resolution the decoder declares: that of encoder map ``output_index``.
    stride = strides[decoder.output_index]
    maps = fake_maps(encoder_name, batch=1)
    with torch.no_grad():
        logits = decoder(maps)
    assert logits.shape == (1, NUM_CLASS, math.ceil(H / stride), math.ceil(W / stride))
    if decoder.deep_sup:
        aux_stride = strides[decoder.aux_index]
        with torch.no_grad():
            aux = decoder.aux_logits(maps)
        assert aux.shape == (1, NUM_CLASS, math.ceil(H / aux_stride), math.ceil(W / aux_stride))


@pytest.mark.parametrize("decoder_name", DECODERS.names())
def test_gradients_reach_every_decoder_parameter(decoder_name):
    channels, _ = declared("resnet18dilated")
    decoder = build_decoder(decoder_name, NUM_CLASS, in_channels=channels).train()
    maps = fake_maps("resnet18dilated", h=33, w=49)
    loss = decoder(maps).logsumexp(1).mean()
    if decoder.deep_sup:
        loss = loss + decoder.aux_logits(maps).logsumexp(1).mean()
    loss.backward()
    params = list(decoder.named_parameters())
    assert [n for n, p in params if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_aux_logits_needs_deep_supervision():
    decoder = build_decoder("c1", NUM_CLASS, in_channels=[16, 32])
    with pytest.raises(RuntimeError, match="without deep supervision"):
        decoder.aux_logits([torch.randn(1, 16, 4, 4), torch.randn(1, 32, 4, 4)])


def test_upernet_without_encoder_widths_explains_the_fix():
    decoder = build_decoder("upernet", NUM_CLASS, fc_dim=512).eval()
    with pytest.raises(ValueError, match="in_channels=encoder.out_channels"):
        decoder(fake_maps("resnet18"))
    decoder = build_decoder("upernet", NUM_CLASS, fc_dim=320).eval()
    with pytest.raises(ValueError, match="in_channels=encoder.out_channels"):
        decoder(fake_maps("mobilenetv2dilated"))


@pytest.mark.parametrize("widths", [{}, {"fc_dim": 512, "in_channels": [256, 512]}])
def test_widths_come_from_in_channels_or_fc_dim_alone(widths):
    with pytest.raises(TypeError, match="in_channels .* or, for the original's layout, fc_dim"):
        build_decoder("c1", NUM_CLASS, **widths)


@pytest.mark.parametrize("decoder_name,expected", [
    ("c1_deepsup", [256, 512]), ("ppm", [256, 512]), ("upernet_lite", [256, 512, 1024, 512]),
])
def test_fc_dim_alone_gives_the_originals_layout(decoder_name, expected):
    assert build_decoder(decoder_name, NUM_CLASS, fc_dim=512).in_channels == expected


@pytest.mark.parametrize("decoder_name", ["c1_deepsup", "ppm_deepsup", "upernet_deepsup"])
def test_deep_sup_on_a_single_map_encoder_reads_that_map(decoder_name):
    # HRNetV2 gives one map; the original's aux head (conv_out[-2]) failed there in training.
    decoder = build_decoder(decoder_name, NUM_CLASS, in_channels=[32]).eval()
    assert decoder.aux_index == -1 and decoder.cbr_deepsup[0].in_channels == 32
    conv5 = torch.randn(2, 32, 9, 13)
    with torch.no_grad():
        aux = decoder.aux_logits([conv5])
        expected = decoder.conv_last_deepsup(decoder.cbr_deepsup(conv5))
        assert decoder([conv5]).shape == aux.shape == (2, NUM_CLASS, 9, 13)
    torch.testing.assert_close(aux, expected)
    # Two or more maps: the second-to-last one, as in the original.
    assert build_decoder(decoder_name, NUM_CLASS,
                         in_channels=[16, 32]).cbr_deepsup[0].in_channels == 16


def test_original_layout_deep_sup_on_one_map_is_explained():
    # Built the original's way (widths from fc_dim: [360, 720]) but fed HRNet's single map.
    decoder = build_decoder("c1_deepsup", NUM_CLASS, fc_dim=720).eval()
    with pytest.raises(ValueError, match="needs encoder map -2, but got 1 .*in_channels="):
        decoder.aux_logits([torch.randn(1, 720, 4, 4)])


def test_wrong_width_is_explained():
    decoder = build_decoder("ppm", NUM_CLASS, in_channels=[32, 64]).eval()
    with pytest.raises(ValueError, match="built for 64 channels in encoder map -1 but got 48"):
        decoder([torch.randn(1, 32, 4, 4), torch.randn(1, 48, 4, 4)])


def test_upernet_fuses_the_pyramid_in_the_originals_order():
    # Pooling branch = conv-norm-ReLU applied *after* upsampling the pooled map (the original's
    # order; the two orders differ once ReLU and BatchNorm statistics are involved).
    decoder = build_decoder("upernet_lite", NUM_CLASS, in_channels=[8, 16]).eval()
    for conv in decoder.ppm_conv:
        conv[1].running_mean.uniform_(-1, 1)
        conv[1].bias.data.uniform_(-1, 1)
    maps = [torch.randn(1, 8, 10, 14), torch.randn(1, 16, 5, 7)]
    conv5 = maps[1]
    with torch.no_grad():
        pyramid = [conv5] + [conv(upsample(pool(conv5), (5, 7)))
                             for pool, conv in zip(decoder.ppm_pooling, decoder.ppm_conv)]
        f = decoder.ppm_last_conv(torch.cat(pyramid, 1))
        lateral = decoder.fpn_in[0](maps[0])
        p0 = decoder.fpn_out[0](lateral + upsample(f, (10, 14)))
        expected = decoder.conv_last(torch.cat([p0, upsample(f, (10, 14))], 1))
        torch.testing.assert_close(decoder(maps), expected)


@pytest.mark.parametrize("decoder_name", DECODERS.names())
def test_decoder_init_is_the_originals(decoder_name):
    decoder = build_decoder(decoder_name, NUM_CLASS, in_channels=[64, 128])
    norms = [m for m in decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(torch.all(n.weight == 1) and torch.allclose(n.bias, torch.full_like(
        n.bias, 1e-4)) for n in norms)
    # Kaiming normal, fan-in: std = sqrt(2 / fan_in), checked on the largest convolution.
    conv = max((m for m in decoder.modules() if isinstance(m, torch.nn.Conv2d)),
               key=lambda m: m.weight.numel())
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
