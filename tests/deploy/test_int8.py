"""int8 inference (mit_semseg.deploy.int8): the plumbing by default, real quantized networks
with ``-m slow`` (an export, a calibration and a compilation take tens of seconds each)."""

import collections
import dataclasses

import cv2
import numpy as np
import pytest
import torch
from model_helpers import randomise_batchnorm

from mit_semseg.deploy import int8
from mit_semseg.deploy.int8 import CalibrationSet, Int8Model, int8_unavailable
from mit_semseg.inference.fast_path import LogitsNetwork
from mit_semseg.inference.trained_model import TrainedModel
from mit_semseg.models import build_segmentation_model, zoo

CPU = torch.device("cpu")
NUM_CLASS = 6


def _write_images(folder, count, size=(40, 56)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"img_{index:02d}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def _odgt(root, paths):
    lines = [f'{{"fpath_img": "{p.relative_to(root).as_posix()}"}}' for p in paths]
    (root / "list.odgt").write_text("\n".join(lines) + "\n")
    return root / "list.odgt"


def _varied_model(encoder, decoder, seed=0):
    """A random model whose BatchNorm statistics and affine parameters differ per channel, so
    that folding and quantization see realistic, uneven ranges."""
    torch.manual_seed(seed)
    return randomise_batchnorm(build_segmentation_model(encoder, decoder, NUM_CLASS).eval(),
                               bias=0.3)


def _saved(module, folder, encoder, decoder):
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("encoder", "decoder"):
        torch.save(getattr(module, part).state_dict(), folder / f"{part}_epoch_1.pth")
    return TrainedModel(encoder, decoder, NUM_CLASS, folder, "epoch_1.pth")


# ------------------------------------------------------------------------- calibration set
def test_calibration_set_takes_evenly_spaced_images_of_an_odgt_below_its_root(tmp_path):
    paths = _write_images(tmp_path / "images", 10)
    listing = _odgt(tmp_path, paths)
    chosen = CalibrationSet(listing, tmp_path, images=4).image_paths()
    assert chosen == [str(tmp_path / "images" / f"img_{i:02d}.png") for i in (0, 2, 5, 7)]
    # a shorter list gives all of its images; a folder is read as test.py reads one
    assert len(CalibrationSet(listing, tmp_path, images=50).image_paths()) == 10
    assert CalibrationSet(tmp_path / "images", images=2).image_paths() == [
        str(paths[0]), str(paths[5])]


def test_calibration_inputs_are_every_image_at_every_scale(tmp_path):
    _write_images(tmp_path / "images", 3, size=(40, 56))
    calibration = CalibrationSet(tmp_path / "images", images=2, scales=(32, 48), max_size=100,
                                 padding_constant=8)
    shapes = [tuple(x.shape) for x in calibration.inputs()]
    # short side 32 -> 32x48 (44.8 rounded up to 48); 48 -> 48x72 (67.2 -> 72)
    assert shapes == [(1, 3, 32, 48), (1, 3, 48, 72)] * 2


def test_calibration_set_refuses_no_images_and_names_a_missing_list(tmp_path):
    with pytest.raises(ValueError, match="calibration images must be > 0"):
        CalibrationSet(tmp_path, images=0)
    with pytest.raises(FileNotFoundError, match="missing.odgt"):
        CalibrationSet(tmp_path / "missing.odgt", tmp_path).image_paths()


def test_calibration_digest_follows_the_images_and_settings(tmp_path):
    paths = _write_images(tmp_path / "images", 4)
    calibration = CalibrationSet(tmp_path / "images", images=4, scales=(32,))
    digest = calibration.digest()
    assert CalibrationSet(tmp_path / "images", images=4, scales=(32,)).digest() == digest
    assert CalibrationSet(tmp_path / "images", images=4, scales=(48,)).digest() != digest
    assert CalibrationSet(tmp_path / "images", images=3, scales=(32,)).digest() != digest
    cv2.imwrite(str(paths[1]), np.zeros((40, 56, 3), np.uint8))  # same name, new pixels
    assert calibration.digest() != digest


# ---------------------------------------------------------------------------- cache key
def test_cache_key_changes_with_the_weights_and_the_calibration(tmp_path):
    pytest.importorskip("torchao", reason="needs pip install 'mit_semseg[int8]'")
    _write_images(tmp_path / "images", 3)
    calibration = CalibrationSet(tmp_path / "images", images=2, scales=(32,))
    model = TrainedModel("resnet18dilated", "c1", NUM_CLASS, tmp_path / "run", "epoch_1.pth")
    (tmp_path / "run").mkdir()
    for part in ("encoder", "decoder"):
        (tmp_path / "run" / f"{part}_epoch_1.pth").write_bytes(b"weights " + part.encode())
    path = int8.int8_cache_path(model, calibration, tmp_path / "cache")
    assert path.parent == tmp_path / "cache" and path.name.startswith("resnet18dilated-c1-")
    assert int8.int8_cache_path(model, calibration, tmp_path / "cache") == path
    (tmp_path / "run" / "decoder_epoch_1.pth").write_bytes(b"retrained")
    retrained = int8.int8_cache_path(model, calibration, tmp_path / "cache")
    assert retrained != path
    other_images = CalibrationSet(tmp_path / "images", images=3, scales=(32,))
    assert int8.int8_cache_path(model, other_images, tmp_path / "cache") != retrained
    plain = TrainedModel("resnet18", "c1", NUM_CLASS, tmp_path / "run", "epoch_1.pth")
    assert int8.int8_cache_path(plain, calibration, tmp_path / "cache") != retrained


# ------------------------------------------------------------------------ where it runs
def _capabilities(monkeypatch, **changes):
    capabilities = {**torch.cpu.get_capabilities(), **changes}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)


def test_int8_is_refused_without_int8_units_in_one_sentence(monkeypatch):
    monkeypatch.setattr(int8.importlib.util, "find_spec", lambda name: object())
    _capabilities(monkeypatch, architecture="x86_64", cpu_name="Old CPU", amx_int8=False,
                  avx512_vnni=False, avx_vnni=False)
    reason = int8_unavailable(CPU)
    assert reason.startswith("int8 inference needs a CPU with an int8 dot-product unit")
    assert "AMX-INT8, AVX-512 VNNI, AVX-VNNI" in reason and "Old CPU" in reason
    assert "\n" not in reason
    _capabilities(monkeypatch, architecture="x86_64", avx_vnni=True)
    assert int8.int8_units() == ["AVX-VNNI"] and int8_unavailable(CPU) is None
    _capabilities(monkeypatch, architecture="aarch64")
    assert "x86-64" in int8_unavailable(CPU)
    assert int8_unavailable("cuda:0") == "int8 inference runs on the CPU, not on cuda:0"


def test_missing_torchao_names_the_extra(monkeypatch):
    monkeypatch.setattr(int8.importlib.util, "find_spec", lambda name: None)
    assert int8_unavailable(CPU) == ("int8 inference needs torchao: pip install "
                                     "'mit_semseg[int8]'")
    model = Int8Model("resnet18dilated", "c1", NUM_CLASS, "run", "epoch_1.pth",
                      calibration_file="calibration.pt")
    with pytest.raises(RuntimeError, match=r"mit_semseg\[int8\]"):
        model.load(CPU)


# --------------------------------------------------------------------- the graph it needs
# ResNet-101 is built from ResNet-50's blocks; its networks (slow to build) run with -m slow
RELEASES = [pytest.param(name, marks=pytest.mark.slow) if "resnet101" in name else name
            for name in zoo.list_models()]


@pytest.mark.parametrize("name", RELEASES)
def test_no_module_runs_twice_in_a_released_network(name):
    """prepare_pt2e annotates one call per module: a module called twice (a shared ReLU)
    makes it fail. ReLUs hold no state, so one per call keeps the checkpoint format."""
    release = zoo.get_model(name)
    module = build_segmentation_model(release.arch_encoder, release.arch_decoder, NUM_CLASS)
    network = LogitsNetwork(module.encoder, module.decoder).eval()
    calls = collections.Counter()
    names = {id(m): n for n, m in network.named_modules()}
    hooks = [m.register_forward_hook(lambda m, i, o: calls.update([names[id(m)]]))
             for m in network.modules()]
    with torch.no_grad():
        network(torch.randn(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    assert calls and max(calls.values()) == 1, calls.most_common(3)


def _observed_modules(prepared):
    """{innermost module name: observers} over the values a prepared graph observes (a
    weight counts for the module that holds it)."""
    observed_in = collections.Counter()
    for node in prepared.graph.nodes:
        if node.op == "call_module" and node.target.startswith(int8._OBSERVER_PREFIX):
            source = node.args[0]
            stack = source.meta.get("nn_module_stack", {}) if source.op != "get_attr" else {}
            owner = (list(stack.values())[-1][0] if stack
                     else str(source.target).rsplit(".", 1)[0])
            observed_in[owner] += 1
    return observed_in


@pytest.mark.parametrize("encoder,decoder,upsampled", [
    ("resnet18dilated", "ppm", "branch_conv"),
    ("resnet18", "upernet", "upsampled_conv"),
])
def test_factored_heads_are_int8_in_their_convolutions_and_float_in_the_resampling(
        encoder, decoder, upsampled):
    """The int8 network computes the PPM and UPerNet fusions in their factored forms: the
    quantizer observes the convolution on the finest map and the kernel taps on the smaller
    maps, and nothing inside the resampling products, whose bilinear weights are no
    activations."""
    pytest.importorskip("torchao", reason="needs pip install 'mit_semseg[int8]'")
    observed_in = _observed_modules(int8._prepared(_varied_model(encoder, decoder)))
    assert observed_in["decoder.conv_main"] >= 1  # its weight, in int8
    taps = [name for name in observed_in if name.startswith(f"decoder.{upsampled}.taps.")]
    assert len(taps) == {"ppm": 4, "upernet": 3}[decoder]  # one per small map
    assert not [name for name in observed_in
                if name.startswith(f"decoder.{upsampled}.resample")]


def test_inputs_below_the_exported_minimum_are_refused_naming_the_fix():
    compiled = int8._FrozenCompiled(torch.nn.Identity())  # compiles on its first call only
    with pytest.raises(ValueError, match=r"at least 64 px per side, got \(32, 100\) \(raise "
                                         r"DATASET.imgSizes"):
        compiled(torch.zeros(1, 3, 32, 100))


# ------------------------------------------------------------------ real int8 networks
def _needs_int8():
    pytest.importorskip("torchao", reason="needs pip install 'mit_semseg[int8]'")
    reason = int8_unavailable(CPU)
    if reason:
        pytest.skip(reason)


def test_int8_weights_are_laid_out_for_the_compiled_input_shape():
    """Under a dynamic input size every int8 convolution's weights are packed for the first
    compiled input's shape (without one, oneDNN reorders 1x1 kernels on every call); the
    compiled network still computes what the converted graph computes, at other sizes too."""
    _needs_int8()
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(8, 32, 1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(32, 8, 3, padding=1)).eval()
    prepare_pt2e, convert_pt2e, quantizer = int8._torchao()
    example = torch.randn(1, 8, 20, 24)
    height, width = (torch.export.Dim(name, min=8, max=256) for name in ("height", "width"))
    program = torch.export.export(network, (example,), strict=False,
                                  dynamic_shapes={"input": {2: height, 3: width}})
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        prepared(example)
    converted = convert_pt2e(prepared)
    counters[int8.COUNTER_GROUP].clear()
    compiled = int8._FrozenCompiled(converted)
    for size in ((64, 72), (80, 64)):
        image = torch.randn(1, 8, *size)
        with torch.no_grad():
            got, expected = compiled(image), converted(image)
        assert _relative_error(got, expected) < 0.05
    assert counters[int8.COUNTER_GROUP]["int8_weight_layout_hints"] == 2  # both convolutions


# |int8 - float| / |float| of the logits of random-weight networks: int8 rounding through 20 to
# 100 layers, measured up to ~0.16 (compiled ResNet-18 + PPM); a wrong scale, a dropped layer
# or a broken graph gives ~1
ERROR_BOUND = 0.25


def _relative_error(got, expected):
    return ((got - expected).norm() / expected.norm()).item()


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", zoo.list_models())
def test_every_released_architecture_quantizes_close_to_float(name):
    """The converted int8 graph (run eagerly, no compilation) computes the float network's
    logits within int8 rounding, on images like those it was calibrated on."""
    _needs_int8()
    release = zoo.get_model(name)
    module = _varied_model(release.arch_encoder, release.arch_decoder)
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, 64, 96, generator=generator) for _ in range(3)]
    states = int8.calibrate_int8(module, images[:2])
    quantized = int8._quantized(module, states)
    with torch.no_grad():
        error = _relative_error(quantized(images[2]), module.logits(images[2]))
    assert error < ERROR_BOUND, error


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compiled_int8_compiles_once_for_every_image_size_and_matches_float():
    _needs_int8()
    import torch._dynamo.utils as dynamo_utils

    module = _varied_model("resnet18dilated", "ppm_deepsup")
    generator = torch.Generator().manual_seed(0)
    states = int8.calibrate_int8(
        module, [torch.randn(1, 3, 96, 128, generator=generator) for _ in range(2)])
    segmenter = int8.int8_segmenter(module, states)
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    for size in [(96, 128), (104, 136), (200, 96), (336, 448), (520, 672)]:
        image = torch.randn(1, 3, *size, generator=generator)
        with torch.inference_mode():
            logits = segmenter.logits(image)
            expected = module.logits(image)
        assert logits.shape == expected.shape
        assert _relative_error(logits, expected) < ERROR_BOUND
    # one graph for all sizes: adaptive pooling as matrix products and the 1x1 branch's
    # mean by rows and columns keep every shape symbolic
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 1


def test_int8_model_quantizes_the_float_model_of_its_weight_files(tmp_path, monkeypatch):
    # the quantization itself is -m slow; here: what load() hands to it (a refactoring once
    # made it build an Int8Model again, whose load() recursed)
    module = _varied_model("mobilenetv2dilated", "c1_deepsup")
    model = _saved(module, tmp_path / "run", "mobilenetv2dilated", "c1_deepsup")
    states = {"observer": torch.ones(2)}
    torch.save(states, tmp_path / "calibration.pt")
    quantized = Int8Model(**{f.name: getattr(model, f.name) for f in dataclasses.fields(model)},
                          calibration_file=tmp_path / "calibration.pt")
    seen = {}
    monkeypatch.setattr(int8, "int8_unavailable", lambda device: None)
    monkeypatch.setattr(int8, "int8_segmenter",
                        lambda float_module, loaded: seen.update(module=float_module,
                                                                 states=loaded) or "segmenter")
    assert quantized.load(CPU) == "segmenter"
    assert torch.equal(seen["states"]["observer"], states["observer"])
    expected = module.state_dict()
    loaded = seen["module"].state_dict()
    assert loaded.keys() == expected.keys()  # the plain module: no folded BatchNorm
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_int8_model_calibrates_once_and_loads_from_the_cache(tmp_path, monkeypatch):
    _needs_int8()
    module = _varied_model("mobilenetv2dilated", "c1_deepsup")
    model = _saved(module, tmp_path / "run", "mobilenetv2dilated", "c1_deepsup")
    _write_images(tmp_path / "images", 3, size=(72, 96))
    calibration = CalibrationSet(tmp_path / "images", images=2, scales=(96,), max_size=128)
    first = int8.int8_model(model, calibration, cache_dir=tmp_path / "cache")
    assert first.precision == "int8" and first.calibration_file.is_file()
    # the lock file goes with its lock (mit_semseg.files.exclusive_lock)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".pt"]

    def no_second_calibration(*args, **kwargs):
        raise AssertionError("calibrated again")

    monkeypatch.setattr(int8, "calibrate_int8", no_second_calibration)
    again = int8.int8_model(model, calibration, cache_dir=tmp_path / "cache")
    assert again == first
    segmenter = again.load(CPU)
    image = next(calibration.inputs())
    with torch.inference_mode():
        assert _relative_error(segmenter.logits(image), module.logits(image)) < ERROR_BOUND

