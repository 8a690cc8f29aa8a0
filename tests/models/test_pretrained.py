import pytest
import torch
from local_http import unused_url

from mit_semseg.download import DownloadError, cache_root
from mit_semseg.models import build_encoder, load_pretrained
from mit_semseg.models.pretrained import PRETRAINED_FILES, pretrained_dir, pretrained_url


def imagenet_file(folder, family, encoder, extra):
    """A file in the original's ImageNet layout: encoder keys (without the SyncBN extras or
    num_batches_tracked, like the released files) plus the classifier the encoders drop."""
    state = {k: v + 1 for k, v in encoder.state_dict().items()
             if not k.endswith(("_tmp_running_mean", "_tmp_running_var", "_running_iter",
                                "num_batches_tracked"))}
    state.update(extra)
    path = folder / PRETRAINED_FILES[family]
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("arch,family,extra", [
    ("resnet18dilated", "resnet18", {"fc.weight": torch.zeros(1000, 512)}),
    ("mobilenetv2dilated", "mobilenetv2", {"classifier.1.weight": torch.zeros(1000, 1280),
                                           "features.18.0.weight": torch.zeros(1280, 320, 1, 1)}),
])
def test_local_file_is_loaded_and_the_classifier_ignored(tmp_path, arch, family, extra):
    path, state = imagenet_file(tmp_path, family, build_encoder(arch), extra)
    encoder = build_encoder(arch, pretrained=True, pretrained_dir=tmp_path)
    loaded = encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k in loaded)
    assert torch.equal(loaded[next(iter(loaded))], state[next(iter(loaded))])


def test_env_var_selects_the_folder(tmp_path, monkeypatch):
    imagenet_file(tmp_path, "resnet18", build_encoder("resnet18"), {})
    monkeypatch.setenv("MIT_SEMSEG_PRETRAINED_DIR", str(tmp_path))
    encoder = build_encoder("resnet18", pretrained=True)
    assert torch.equal(encoder.conv1.weight,
                       torch.load(tmp_path / "resnet18-imagenet.pth")["conv1.weight"])


def test_mismatching_file_lists_keys_and_leaves_the_encoder_untouched(tmp_path):
    imagenet_file(tmp_path, "resnet50", build_encoder("resnet18"), {})  # wrong depth
    encoder = build_encoder("resnet50")
    before = encoder.conv1.weight.clone()
    with pytest.raises(RuntimeError, match="does not match the resnet50 encoder") as info:
        load_pretrained(encoder, model_dir=tmp_path)
    message = str(info.value)
    assert "missing keys [layer1.0.bn3" in message
    assert "shape mismatches [layer1.0.conv1.weight (64, 128, 3, 3) vs (64, 128, 1, 1)" in message
    assert torch.equal(encoder.conv1.weight, before)


def test_offline_download_names_url_and_path_and_leaves_no_file(tmp_path):
    encoder = build_encoder("resnet18")
    url = unused_url("/resnet18-imagenet.pth")
    with pytest.raises(DownloadError) as info:
        load_pretrained(encoder, model_dir=tmp_path, url=url, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert url in message and str(tmp_path / "resnet18-imagenet.pth") in message
    assert "MIT_SEMSEG_PRETRAINED_DIR" in message
    assert [p.name for p in tmp_path.iterdir()] == []


def test_default_folder_is_the_per_user_cache_not_the_working_directory(tmp_path,
                                                                           monkeypatch):
    monkeypatch.delenv("MIT_SEMSEG_PRETRAINED_DIR", raising=False)
    monkeypatch.setenv("MIT_SEMSEG_HOME", str(tmp_path / "home"))
    assert pretrained_dir() == cache_root() / "pretrained" == tmp_path / "home" / "pretrained"
    monkeypatch.setenv("MIT_SEMSEG_PRETRAINED_DIR", str(tmp_path / "mine"))
    assert pretrained_dir() == tmp_path / "mine"
    assert pretrained_dir(tmp_path / "arg") == tmp_path / "arg"


def test_downloaded_weights_are_verified_on_every_load(tmp_path, http_server, monkeypatch):
    served, state = imagenet_file(tmp_path, "resnet18", build_encoder("resnet18"),
                                  {"fc.weight": torch.zeros(10, 512)})
    url = http_server.serve("/resnet18-imagenet.pth", served.read_bytes())
    monkeypatch.setenv("MIT_SEMSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MIT_SEMSEG_PRETRAINED_DIR", raising=False)
    encoder = load_pretrained(build_encoder("resnet18"), url=url, progress=False)
    assert torch.equal(encoder.conv1.weight, state["conv1.weight"])
    cached = tmp_path / "home" / "pretrained" / "resnet18-imagenet.pth"
    assert cached.read_bytes() == served.read_bytes()
    assert cached.with_name(cached.name + ".sha256").is_file()
    cached.write_bytes(cached.read_bytes()[:-8] + bytes(8))  # damaged on disk
    encoder = load_pretrained(build_encoder("resnet18"), url=url, progress=False)
    assert torch.equal(encoder.conv1.weight, state["conv1.weight"])
    assert cached.read_bytes() == served.read_bytes()
    assert len(http_server.hits("/resnet18-imagenet.pth")) == 2


def test_urls_follow_the_original_pattern():
    assert pretrained_url("resnet50") == (
        "http://sceneparsing.csail.mit.edu/model/pretrained_resnet/resnet50-imagenet.pth")
    assert pretrained_url("mobilenetv2").endswith("/mobilenet_v2.pth.tar")
    with pytest.raises(KeyError, match="resnet18"):
        pretrained_url("vgg16")


def test_weights_file_wins_over_pretrained(tmp_path):
    source = build_encoder("resnet18")
    torch.save(source.state_dict(), tmp_path / "enc.pth")
    # pretrained=True would fail (empty folder, unreachable default URL is never tried)
    encoder = build_encoder("resnet18", weights=str(tmp_path / "enc.pth"), pretrained=True,
                            pretrained_dir=tmp_path / "nothing-here")
    assert torch.equal(encoder.conv1.weight, source.conv1.weight)
