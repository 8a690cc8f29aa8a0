import io
from pathlib import Path

import pytest
import torch
from local_http import serve_zoo_model, unused_url

from mit_semseg.config import get_cfg_defaults
from mit_semseg.download import DownloadError
from mit_semseg.models import from_pretrained
from mit_semseg.models.zoo import (
    BASE_URL,
    MODELS,
    build_model,
    fetch,
    find_model,
    get_model,
    list_models,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL = "ade20k-mobilenetv2dilated-c1_deepsup"  # the smallest released model (2.2 M parameters)

# The released folders and checkpoint epochs (the original's demo scripts and server layout).
RELEASED = {
    "ade20k-mobilenetv2dilated-c1_deepsup": 20, "ade20k-resnet18dilated-c1_deepsup": 20,
    "ade20k-resnet18dilated-ppm_deepsup": 20, "ade20k-resnet50dilated-ppm_deepsup": 20,
    "ade20k-resnet101dilated-ppm_deepsup": 25, "ade20k-resnet50-upernet": 30,
    "ade20k-resnet101-upernet": 50, "ade20k-hrnetv2-c1": 30,
}


def test_the_table_lists_every_released_model_and_agrees_with_its_config():
    assert {name: MODELS[name].epoch for name in list_models()} == RELEASED
    for model in MODELS.values():
        cfg = get_cfg_defaults()
        cfg.merge_from_file(str(REPO_ROOT / "config" / f"{model.config}.yaml"))
        assert cfg.DATASET.num_class == model.num_class == 150
        if model.config == model.name or model.name == "ade20k-hrnetv2-c1":
            assert (cfg.MODEL.arch_encoder, cfg.MODEL.arch_decoder, cfg.MODEL.fc_dim) == (
                model.arch_encoder, model.arch_decoder, model.fc_dim), model.name
        cfg.merge_from_list(model.config_opts())
        assert (cfg.MODEL.arch_encoder, cfg.MODEL.arch_decoder) == (model.arch_encoder,
                                                                    model.arch_decoder)
        # in the published table multi-scale testing always raises pixel accuracy (a check
        # that the columns were not swapped), and no mIoU is above its accuracy
        assert model.multi_scale.pixel_acc > model.single_scale.pixel_acc
        assert model.single_scale.miou < model.single_scale.pixel_acc


def test_every_entry_builds_its_architecture():
    with torch.device("meta"):  # shapes only: no memory, no time spent on weights
        for name in list_models():
            module = build_model(name)
            model = MODELS[name]
            assert module.encoder.out_channels[-1] == model.fc_dim
            assert len(module.class_names) == len(module.palette) == 150


def test_urls_follow_the_servers_layout_and_a_mirror_replaces_the_base(monkeypatch):
    monkeypatch.delenv("MIT_SEMSEG_MODEL_MIRROR", raising=False)
    model = get_model("ade20k-resnet101dilated-ppm_deepsup")
    assert model.urls() == (
        f"{BASE_URL}/ade20k-resnet101dilated-ppm_deepsup/encoder_epoch_25.pth",
        f"{BASE_URL}/ade20k-resnet101dilated-ppm_deepsup/decoder_epoch_25.pth")
    assert BASE_URL == "http://sceneparsing.csail.mit.edu/model/pytorch"
    monkeypatch.setenv("MIT_SEMSEG_MODEL_MIRROR", "https://example.org/m/")
    assert model.urls()[0] == "https://example.org/m/ade20k-resnet101dilated-ppm_deepsup/" \
                              "encoder_epoch_25.pth"
    assert model.urls("http://other")[1].startswith("http://other/ade20k-resnet101dil")
    assert model.checkpoint == "epoch_25.pth"
    assert model.hub_name == "ade20k_resnet101dilated_ppm_deepsup"


def test_find_model_by_architecture():
    pairs = {(m.arch_encoder, m.arch_decoder) for m in MODELS.values()}
    assert len(pairs) == len(MODELS)  # one released model per architecture
    for model in MODELS.values():
        assert find_model(model.arch_encoder.upper(), model.arch_decoder) is model
    assert find_model("mobilenetv2dilated", "ppm_deepsup") is None  # never released


def test_names_are_forgiving_and_unknown_names_list_the_choices():
    assert get_model("ADE20K_resnet50dilated_ppm_deepsup").name == \
        "ade20k-resnet50dilated-ppm_deepsup"
    with pytest.raises(KeyError, match="did you mean 'ade20k-resnet50-upernet'") as info:
        get_model("ade20k-resnet50-uppernet")
    assert all(name in str(info.value) for name in list_models())


def checkpoint_bytes(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


@pytest.fixture
def served_small_model(http_server):
    """The small zoo model with random weights, served in the original's layout."""
    return serve_zoo_model(http_server, SMALL), http_server


def test_from_pretrained_loads_the_served_weights_strictly_and_predicts(served_small_model,
                                                                         tmp_path):
    source, server = served_small_model
    module = from_pretrained(SMALL, mirror=server.url, cache_dir=tmp_path, progress=False)
    assert not module.training
    own = module.state_dict()
    assert own.keys() == source.state_dict().keys()
    assert all(torch.equal(own[k], v) for k, v in source.state_dict().items())
    images = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        probs = module.predict(images, (48, 64))
        expected = source.predict(images, (48, 64))
    assert probs.shape == (2, 150, 48, 64)
    assert torch.equal(probs, expected)
    assert module.class_names[:3] == ["wall", "building", "sky"]
    assert tuple(module.palette[0]) == (120, 120, 120)
    folder = tmp_path / SMALL
    assert sorted(p.name for p in folder.iterdir()) == [
        "decoder_epoch_20.pth", "decoder_epoch_20.pth.sha256",
        "encoder_epoch_20.pth", "encoder_epoch_20.pth.sha256"]
    server.close()  # cached and verified: no network needed any more
    assert fetch(SMALL, cache_dir=tmp_path) == (folder / "encoder_epoch_20.pth",
                                                folder / "decoder_epoch_20.pth")


def test_the_environment_selects_mirror_and_cache(served_small_model, tmp_path, monkeypatch):
    _, server = served_small_model
    monkeypatch.setenv("MIT_SEMSEG_MODEL_MIRROR", server.url)
    monkeypatch.setenv("MIT_SEMSEG_HOME", str(tmp_path / "home"))
    encoder, decoder = fetch(SMALL.replace("-", "_"), progress=False)
    assert encoder == tmp_path / "home" / "models" / SMALL / "encoder_epoch_20.pth"
    assert decoder.is_file() and len(server.requests) == 2


def test_offline_is_one_line_naming_both_urls_and_the_folder(tmp_path):
    base = unused_url("/mirror")
    with pytest.raises(DownloadError) as info:
        from_pretrained(SMALL, mirror=base, cache_dir=tmp_path, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert f"{base}/{SMALL}/encoder_epoch_20.pth" in message
    assert f"{base}/{SMALL}/decoder_epoch_20.pth" in message
    assert f"{tmp_path / SMALL}/" in message and "MIT_SEMSEG_MODEL_MIRROR" in message


def test_a_cut_download_is_never_loaded(served_small_model, tmp_path):
    _, server = served_small_model
    server.drop_next(f"/{SMALL}/decoder_epoch_20.pth", after_bytes=50_000, times=3)
    with pytest.raises(DownloadError, match="decoder_epoch_20.pth"):
        from_pretrained(SMALL, mirror=server.url, cache_dir=tmp_path, progress=False)
    assert not (tmp_path / SMALL / "decoder_epoch_20.pth").exists()
    server.close()
    with pytest.raises(DownloadError, match="decoder_epoch_20.pth"):  # offline now
        from_pretrained(SMALL, mirror=server.url, cache_dir=tmp_path, progress=False)


def test_weights_that_do_not_fit_are_refused(http_server, tmp_path):
    source = build_model(SMALL)
    encoder_state = source.encoder.state_dict()
    encoder_state.pop(next(iter(encoder_state)))
    buffer = io.BytesIO()
    torch.save(encoder_state, buffer)
    http_server.serve(f"/{SMALL}/encoder_epoch_20.pth", buffer.getvalue())
    http_server.serve(f"/{SMALL}/decoder_epoch_20.pth", checkpoint_bytes(source.decoder))
    with pytest.raises(RuntimeError, match="encoder_epoch_20.pth"):
        from_pretrained(SMALL, mirror=http_server.url, cache_dir=tmp_path, progress=False)
