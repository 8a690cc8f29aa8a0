import copy
import functools

import pytest
import torch
import torch.nn as nn

from mit_semseg.models import (
    ENCODERS,
    attach_upstream_bn_buffers,
    build_decoder,
    build_encoder,
    load_weights,
)
from mit_semseg.models.checkpoint_format import UPSTREAM_BN_EXTRAS


def shapes(module):
    return {key: list(value.shape) for key, value in module.state_dict().items()}


@functools.cache
def layout_and_family(name):
    """An encoder's key layout and which ImageNet weights it takes (what it declares): one
    layout per family, whatever the output stride."""
    encoder = build_encoder(name)
    return shapes(encoder), getattr(encoder, "pretrained_name", None)


def test_every_original_encoder_is_covered(upstream_reference):
    assert set(upstream_reference["encoder"]) <= set(ENCODERS.names())


@pytest.mark.parametrize("name", ENCODERS.names())
def test_encoder_keys_and_shapes_equal_the_originals(name, upstream_reference):
    reference = upstream_reference["encoder"]
    layout, family = layout_and_family(name)
    same_network = [ref for ref in reference if ref == name] or [
        ref for ref in reference if layout_and_family(ref)[1] == family]
    if not same_network:
        pytest.skip(f"{name} has no counterpart in the original")
    assert layout == reference[same_network[0]]


def test_decoder_keys_and_shapes_equal_the_originals(upstream_reference):
    for key, expected in upstream_reference["decoder"].items():
        arch, fc_dim, num_class = key.split("|")
        decoder = build_decoder(arch, int(num_class), fc_dim=int(fc_dim))
        assert shapes(decoder) == expected, key


def test_extras_mirror_the_running_statistics():
    encoder = build_encoder("resnet18")
    encoder.bn1.running_mean.uniform_()
    state = encoder.state_dict()
    assert torch.equal(state["bn1._tmp_running_mean"], state["bn1.running_mean"])
    assert torch.equal(state["bn1._tmp_running_var"], state["bn1.running_var"])
    assert torch.equal(state["bn1._running_iter"], torch.ones(1))
    # The extras follow each layer's own buffers, in the original's order.
    keys = [k for k in state if k.startswith("bn1.")]
    assert keys[-4:] == ["bn1.num_batches_tracked", *(f"bn1.{e}" for e in UPSTREAM_BN_EXTRAS)]


def _perturbed(module):
    state = module.state_dict()
    return {k: (v + torch.rand_like(v) if v.is_floating_point() else v) for k, v in state.items()}


@pytest.mark.parametrize("drop", [(), UPSTREAM_BN_EXTRAS,
                                  (*UPSTREAM_BN_EXTRAS, "num_batches_tracked")])
def test_strict_load_accepts_checkpoints_with_or_without_extras(drop):
    source = build_decoder("ppm_deepsup", 5, fc_dim=64)
    state = {k: v for k, v in _perturbed(source).items() if k.rsplit(".", 1)[-1] not in drop}
    target = build_decoder("ppm_deepsup", 5, fc_dim=64)
    target.load_state_dict(state, strict=True)
    for key, value in target.state_dict().items():
        if key in state and not key.endswith(UPSTREAM_BN_EXTRAS):
            assert torch.equal(value, state[key]), key


def test_strict_load_still_reports_real_mismatches():
    decoder = build_decoder("c1", 5, fc_dim=64)
    state = decoder.state_dict()
    del state["cbr.1.weight"]
    state["bogus.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="cbr.1.weight") as info:
        decoder.load_state_dict(state)
    assert "bogus.weight" in str(info.value)


def test_load_weights_strips_module_prefix_and_names_the_file(tmp_path, caplog):
    source = build_encoder("resnet18")
    path = tmp_path / "encoder.pth"
    torch.save({f"module.{k}": v for k, v in _perturbed(source).items()}, path)
    target = build_encoder("resnet18")
    with caplog.at_level("INFO"):
        load_weights(target, path)
    assert "module." in caplog.text
    reloaded = torch.load(path)
    assert torch.equal(target.conv1.weight, reloaded["module.conv1.weight"])
    bad = tmp_path / "decoder.pth"
    torch.save(build_decoder("c1", 5, fc_dim=64).state_dict(), bad)
    with pytest.raises(RuntimeError, match="decoder.pth"):
        load_weights(target, bad)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_weights(target, tmp_path / "missing.pth")


def test_builder_round_trip_through_files(tmp_path):
    encoder = build_encoder("mobilenetv2dilated")
    decoder = build_decoder("c1_deepsup", 5, fc_dim=320)
    torch.save(encoder.state_dict(), tmp_path / "enc.pth")
    torch.save(decoder.state_dict(), tmp_path / "dec.pth")
    encoder2 = build_encoder("mobilenetv2dilated", weights=str(tmp_path / "enc.pth"))
    decoder2 = build_decoder("c1_deepsup", 5, fc_dim=320, weights=str(tmp_path / "dec.pth"))
    for a, b in ((encoder, encoder2), (decoder, decoder2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_hooks_survive_deepcopy_wrappers_and_bn_replacement():
    encoder = build_encoder("resnet18")
    expected = set(encoder.state_dict())
    assert set(copy.deepcopy(encoder).state_dict()) == expected
    assert set(nn.DataParallel(encoder).state_dict()) == {f"module.{k}" for k in expected}

    class OtherBatchNorm(nn.BatchNorm2d):
        pass

    def replace(module):
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, OtherBatchNorm(child.num_features))
            else:
                replace(child)

    replace(encoder)
    assert isinstance(encoder.bn1, OtherBatchNorm)
    assert set(encoder.state_dict()) == expected
    encoder.load_state_dict(build_encoder("resnet18").state_dict())


def test_hooks_survive_sync_batchnorm_conversion():
    nn_lib = pytest.importorskip("mit_semseg.lib.nn")
    decoder = build_decoder("ppm_deepsup", 5, fc_dim=64)
    expected = set(decoder.state_dict())
    converted = nn_lib.convert_sync_batchnorm(decoder)
    assert not isinstance(converted.conv_last[1], nn.BatchNorm2d)
    assert set(converted.state_dict()) == expected
    converted.load_state_dict(build_decoder("ppm_deepsup", 5, fc_dim=64).state_dict())


def test_attach_is_idempotent_and_works_on_any_module():
    module = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    attach_upstream_bn_buffers(module)
    attach_upstream_bn_buffers(module)
    keys = list(module.state_dict())
    assert keys.count("1._running_iter") == 1
    assert len(keys) == 2 + 8


def test_state_dict_mismatch_names_keys_shapes_and_another_class_count():
    from mit_semseg.models import build_decoder
    from mit_semseg.models.checkpoint_format import state_dict_mismatch

    decoder = build_decoder("c1_deepsup", 6, fc_dim=512)
    state = decoder.state_dict()
    assert not state_dict_mismatch(decoder, state)
    # the original's files lack num_batches_tracked: optional, as loading treats it
    assert not state_dict_mismatch(decoder, {k: v for k, v in state.items()
                                             if not k.endswith("num_batches_tracked")})
    other = build_decoder("c1_deepsup", 9, fc_dim=512).state_dict()
    mismatch = state_dict_mismatch(decoder, other)
    assert sorted(mismatch.shapes) == ["conv_last.bias", "conv_last.weight",
                                       "conv_last_deepsup.bias", "conv_last_deepsup.weight"]
    assert mismatch.shapes["conv_last.bias"] == ((9,), (6,))
    assert mismatch.other_class_count(6) == 9
    renamed = {("x." + k if k.startswith("cbr.") else k): v for k, v in state.items()}
    mismatch = state_dict_mismatch(decoder, renamed)
    assert mismatch.missing and all(k.startswith("cbr.") for k in mismatch.missing)
    assert all(k.startswith("x.cbr.") for k in mismatch.unexpected)
    assert mismatch.other_class_count(6) is None
    wider = build_decoder("c1_deepsup", 6, fc_dim=2048).state_dict()
    assert state_dict_mismatch(decoder, wider).other_class_count(6) is None
