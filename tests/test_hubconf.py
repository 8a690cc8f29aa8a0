from pathlib import Path

import pytest
import torch
from local_http import serve_zoo_model

from mit_semseg.models.zoo import MODELS

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = "ade20k-mobilenetv2dilated-c1_deepsup"
ENTRY = "ade20k_mobilenetv2dilated_c1_deepsup"


@pytest.fixture
def github_is_this_checkout(monkeypatch):
    """torch.hub.list/help only take GitHub repos: resolve any repo to this checkout offline."""
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: str(REPO_ROOT))


def test_list_and_help_show_every_zoo_model(github_is_this_checkout):
    assert sorted(torch.hub.list("owner/mit_semseg")) == sorted(
        m.hub_name for m in MODELS.values())
    doc = torch.hub.help("owner/mit_semseg", "ade20k_resnet101_upernet")
    assert "resnet101 encoder + upernet decoder" in doc and "ade20k-resnet101-upernet" in doc
    assert "epoch 50" in doc and "mIoU 42.00 / pixel accuracy 80.79 % single-scale" in doc
    assert "Args:" in doc and "pretrained" in doc


@pytest.fixture
def served(http_server, tmp_path, monkeypatch):
    source = serve_zoo_model(http_server, SMALL)
    monkeypatch.setenv("MIT_SEMSEG_MODEL_MIRROR", http_server.url)
    monkeypatch.setenv("MIT_SEMSEG_HOME", str(tmp_path))
    return source, http_server


def test_load_local_pretrained_gives_the_served_model(served, tmp_path):
    source, server = served
    model = torch.hub.load(str(REPO_ROOT), ENTRY, source="local", pretrained=True,
                           progress=False)
    assert not model.training
    own = model.state_dict()
    assert own.keys() == source.state_dict().keys()
    assert all(torch.equal(own[k], v) for k, v in source.state_dict().items())
    images = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(model.predict(images, (40, 56)), source.predict(images, (40, 56)))
    assert (tmp_path / "models" / SMALL / "encoder_epoch_20.pth").is_file()
    assert len(server.requests) == 2


def test_load_local_without_weights_builds_the_architecture_offline(served):
    source, server = served
    model = torch.hub.load(str(REPO_ROOT), ENTRY, source="local", pretrained=False)
    assert model.training and server.requests == []
    assert model.state_dict().keys() == source.state_dict().keys()
    assert not torch.equal(model.encoder.features[0][0].weight,
                           source.encoder.features[0][0].weight)
    assert model.class_names[0] == "wall"
    with pytest.raises(TypeError, match="pretrained=False takes no other arguments"):
        torch.hub.load(str(REPO_ROOT), ENTRY, source="local", pretrained=False, device="cpu")
