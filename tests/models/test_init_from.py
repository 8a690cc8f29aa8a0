"""mit_semseg.models.init_from: starting a model for other classes from a trained one.

The source weights are random but distinct (BatchNorm statistics included), so "loaded" and
"copied" are checked by equality with the source's tensors, "freshly initialised" by equality
with a model built from the same seed without a source."""

import io
import os

import pytest
import torch
from local_http import serve_zoo_model

from mit_semseg.config import load_config
from mit_semseg.download import DownloadError
from mit_semseg.models import DECODERS, build_decoder, build_segmentation_model
from mit_semseg.models.classes import load_class_info, write_class_table
from mit_semseg.models.init_from import (
    InitSource,
    find_source,
    initialise_from,
    match_classes,
    run_source,
)
from mit_semseg.models.zoo import MODELS, get_model

SMALL = "ade20k-mobilenetv2dilated-c1_deepsup"
ARCH = ("mobilenetv2dilated", "c1_deepsup")
SOURCE_CLASSES = [["wall"], ["sky"], ["person", "human"], ["tree"]]
ADE_SYNONYMS = load_class_info()["synonyms"]


def randomised(module):
    """``module`` with random BatchNorm statistics too (every tensor distinct from a fresh
    build's)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return module


def save_run(folder, module, epoch, classes=SOURCE_CLASSES, arch=ARCH):
    """A training run's folder: the epoch's two files, config.yaml, object_info.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(module.encoder.state_dict(), folder / f"encoder_epoch_{epoch}.pth")
    torch.save(module.decoder.state_dict(), folder / f"decoder_epoch_{epoch}.pth")
    cfg = load_config("synthetic-mobilenetv2dilated-c1_deepsup",
                      ["MODEL.arch_encoder", arch[0], "MODEL.arch_decoder", arch[1],
                       "DATASET.num_class", str(len(classes)), "TRAIN.num_epoch", str(epoch)])
    (folder / "config.yaml").write_text(cfg.dump())
    write_class_table(folder / "object_info.csv", classes,
                      torch.randint(0, 255, (len(classes), 3)).numpy())
    return folder


def source_model(num_class=None, arch=ARCH, seed=1):
    torch.manual_seed(seed)
    return randomised(build_segmentation_model(*arch, num_class or len(SOURCE_CLASSES)))


def fresh_pair(num_class, arch=ARCH, seed=5):
    """Two identical fresh builds: one to initialise, one to compare with."""
    torch.manual_seed(seed)
    target = build_segmentation_model(*arch, num_class)
    torch.manual_seed(seed)
    return target, build_segmentation_model(*arch, num_class)


def test_names_match_case_insensitively_on_synonyms_display_names_first():
    source = [["wall"], ["person", "individual", "someone"], ["car", "auto", "automobile"],
              ["b"], ["a", "b"]]
    target = [["PERSON"], ["my car", "Automobile"], ["tree"], ["  Wall "], ["b"], ["a"]]
    assert match_classes(target, source) == [1, 2, None, 0, 3, 4]
    # ADE20K's table: a user's "people;person" finds ADE20K's person through the synonym
    assert match_classes([["people", "person"], ["Sky"]], ADE_SYNONYMS) == [12, 2]


@pytest.mark.parametrize("name", DECODERS.names())
def test_every_decoder_declares_its_class_score_layers(name):
    decoder = build_decoder(name, 7, in_channels=[8, 16, 32, 64])
    layers = decoder.class_score_layers()
    assert "conv_last" in next(iter(layers))
    assert ("conv_last_deepsup" in layers) == decoder.deep_sup
    state = decoder.state_dict()
    for prefix, conv in layers.items():
        assert conv.out_channels == 7 and conv.kernel_size == (1, 1)
        assert state[f"{prefix}.weight"].shape[0] == 7 and f"{prefix}.bias" in state


def test_a_run_folder_loads_every_fitting_tensor_and_copies_matched_rows(tmp_path, caplog):
    older = source_model(seed=9)
    source = source_model()
    run = save_run(tmp_path / "run", older, 1)
    save_run(run, source, 2)  # the last complete epoch is the one used
    (run / "encoder_epoch_3.pth").write_bytes(b"")  # without its decoder: not complete
    found = run_source(run)
    assert found.encoder_file.name == "encoder_epoch_2.pth" and found.arch == ARCH
    assert found.class_synonyms == tuple(tuple(c) for c in SOURCE_CLASSES)
    target, fresh = fresh_pair(3)
    mine = [["Human"], ["cat", "kitty"], ["Sky"]]
    with caplog.at_level("INFO"):
        report = initialise_from(target, found, mine)
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(target.encoder.state_dict()[key], value), key
    ours, theirs, new = (target.decoder.state_dict(), source.decoder.state_dict(),
                         fresh.decoder.state_dict())
    class_keys = {f"{p}.{s}" for p in ("conv_last", "conv_last_deepsup") for s in ("weight",
                                                                                   "bias")}
    for key in ours:
        if key not in class_keys:
            assert torch.equal(ours[key], theirs[key]), key
    for key in class_keys:
        assert torch.equal(ours[key][0], theirs[key][2])  # Human <- person (a synonym)
        assert torch.equal(ours[key][2], theirs[key][1])  # Sky <- sky
        assert torch.equal(ours[key][1], new[key][1])  # cat: new, the fresh build's rows
        assert not any(torch.equal(ours[key][1], row) for row in theirs[key])
    assert report.matches == [("Human", "person"), ("cat", None), ("Sky", "sky")]
    line = report.summary()
    assert line in caplog.text and "\n" not in line
    assert "re-initialised for 3 classes: conv_last, conv_last_deepsup" in line
    assert "classes matched (2 of 3): Human <- person, Sky <- sky; new: cat" in line
    assert report.encoder_tensors == len([k for k in source.encoder.state_dict()
                                          if not k.endswith(("_tmp_running_mean",
                                                             "_tmp_running_var", "_running_iter",
                                                             "num_batches_tracked"))])
    assert (f"loaded the encoder ({report.encoder_tensors} tensors) and "
            f"{len(report.decoder_loaded)} decoder tensors;") in line


def test_a_source_without_deep_supervision_leaves_that_head_fresh(tmp_path):
    source = source_model(arch=("mobilenetv2dilated", "c1"))
    run = save_run(tmp_path / "run", source, 1, arch=("mobilenetv2dilated", "c1"))
    target, fresh = fresh_pair(2)
    report = initialise_from(target, run_source(run), [["tree"], ["wall"]])
    ours, theirs, new = (target.decoder.state_dict(), source.decoder.state_dict(),
                         fresh.decoder.state_dict())
    for key in ours:
        if key.startswith(("cbr_deepsup", "conv_last_deepsup")):
            assert torch.equal(ours[key], new[key]), key
    assert torch.equal(ours["conv_last.weight"], theirs["conv_last.weight"][[3, 0]])
    assert "not in the source, freshly initialised: cbr_deepsup.0, cbr_deepsup.1" in (
        report.summary())


def test_an_encoder_of_another_architecture_is_refused(tmp_path):
    run = save_run(tmp_path / "run", source_model(arch=("resnet18dilated", "c1_deepsup")), 1,
                   arch=("resnet18dilated", "c1_deepsup"))
    target, _ = fresh_pair(2)
    with pytest.raises(ValueError, match=r"encoder_epoch_1.pth \(a resnet18dilated encoder\) "
                                         r"does not fit the model's encoder: .*set "
                                         r"MODEL.arch_encoder and MODEL.fc_dim"):
        initialise_from(target, run_source(run), [["a"], ["b"]])
    with pytest.raises(ValueError, match="3 class names for a decoder of 2 classes"):
        initialise_from(target, run_source(run), [["a"], ["b"], ["c"]])


def test_sources_by_folder_released_name_and_published_run(http_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MIT_SEMSEG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MIT_SEMSEG_MODEL_MIRROR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"nope: no such run folder, and unknown "
                                                r"pretrained model 'nope'.* needs "
                                                r"\$MIT_SEMSEG_MODEL_MIRROR"):
        find_source("nope")
    with pytest.raises(FileNotFoundError, match="no encoder_epoch_N.pth with its decoder"):
        find_source(str(tmp_path))
    monkeypatch.setenv("MIT_SEMSEG_MODEL_MIRROR", http_server.url)
    with pytest.raises(DownloadError, match=r"ade20k-resnet50dilatd-ppm_deepsup: no such run "
                                            r"folder, unknown pretrained model .*did you mean "
                                            r"'ade20k-resnet50dilated-ppm_deepsup'.* no run of "
                                            r"that name could be fetched .*config.yaml"):
        find_source("ade20k-resnet50dilatd-ppm_deepsup", progress=False)
    # a released model: ADE20K's classes and architecture
    released = serve_zoo_model(http_server, SMALL)
    found = find_source(SMALL, progress=False)
    assert found.arch == ARCH and len(found.class_synonyms) == 150
    assert found.class_synonyms[12][:2] == ("person", "individual")
    assert found.encoder_file == tmp_path / "home" / "models" / SMALL / "encoder_epoch_20.pth"
    target, fresh = fresh_pair(3)
    initialise_from(target, found, [["person"], ["widget"], ["sky"]])
    rows = target.decoder.conv_last.weight
    assert torch.equal(rows[0], released.decoder.conv_last.weight[12])
    assert torch.equal(rows[2], released.decoder.conv_last.weight[2])
    assert torch.equal(rows[1], fresh.decoder.conv_last.weight[1])
    # a run published on the mirror: its four files, fetched into the cache
    run = save_run(tmp_path / "published", source_model(), 3)
    for name in ("config.yaml", "object_info.csv", "encoder_epoch_3.pth",
                 "decoder_epoch_3.pth"):
        http_server.serve(f"/my-run/{name}", (run / name).read_bytes())
    found = find_source("my-run", progress=False)
    assert found.name == "published run my-run" and found.arch == ARCH
    assert found.class_synonyms[2] == ("person", "human")
    cached = tmp_path / "home" / "models" / "my-run"
    assert sorted(os.listdir(cached)) == sorted(
        name for f in ("config.yaml", "object_info.csv", "encoder_epoch_3.pth",
                       "decoder_epoch_3.pth") for name in (f, f + ".sha256"))  # no lock left


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_every_released_architecture(name, tmp_path):
    release = get_model(name)
    arch = (release.arch_encoder, release.arch_decoder)
    torch.manual_seed(0)
    source = randomised(build_segmentation_model(*arch, 150))
    files = {}
    for part in ("encoder", "decoder"):
        buffer = io.BytesIO()
        torch.save(getattr(source, part).state_dict(), buffer)
        files[part] = tmp_path / f"{part}.pth"
        files[part].write_bytes(buffer.getvalue())
    found = InitSource(name, files["encoder"], files["decoder"],
                       tuple(tuple(s) for s in ADE_SYNONYMS), arch)
    target, fresh = fresh_pair(3, arch)
    report = initialise_from(target, found, [["car"], ["gizmo"], ["Wall"]])
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(target.encoder.state_dict()[key], value), key
    ours, theirs, new = (target.decoder.state_dict(), source.decoder.state_dict(),
                         fresh.decoder.state_dict())
    for prefix in target.decoder.class_score_layers():
        for suffix in ("weight", "bias"):
            key = f"{prefix}.{suffix}"
            assert torch.equal(ours[key][[0, 2]], theirs[key][[20, 0]]), key
            assert torch.equal(ours[key][1], new[key][1]), key
    assert report.decoder_fresh == []  # the same architecture: everything else loads
    assert len(report.decoder_loaded) > 0
