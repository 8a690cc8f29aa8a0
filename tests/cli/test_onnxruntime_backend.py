"""``MODEL.backend onnxruntime`` in eval.py, eval_multipro.py and test.py: the same labels as
PyTorch, and its setup errors. One ONNX export (~10 s) serves the whole module: it is cached
under $MIT_SEMSEG_HOME, which every test here shares."""

import importlib.util
import json

import cv2
import numpy as np
import pytest
import torch
from eval_fixtures import CFG, make_tiny_run
from model_helpers import randomise_batchnorm

from mit_semseg.cli import common
from mit_semseg.cli import test as test_cli
from mit_semseg.deploy.onnxruntime import EXPORT_TOLERANCE, OnnxRuntimeSegmenter
from mit_semseg.inference.predict import predict_probs

# every test here exports a model first (about 20 s per worker); tests/deploy covers the export
pytestmark = pytest.mark.slow

ONNX = ("MODEL.backend", "onnxruntime")


@pytest.fixture(scope="module")
def varied_run(tmp_path_factory):
    """The tiny run with non-trivial BatchNorm statistics, so that its labels vary (the plain
    random model predicts one class everywhere), and its ONNX export made once."""
    pytest.importorskip("onnxruntime", reason="needs pip install 'mit_semseg[onnx]'")
    from mit_semseg.deploy.onnxruntime import cached_onnx_export
    from mit_semseg.inference.trained_model import TrainedModel
    from mit_semseg.models import build_segmentation_model

    root = tmp_path_factory.mktemp("varied_run")
    run = make_tiny_run(root)
    torch.manual_seed(1)
    module = randomise_batchnorm(build_segmentation_model(
        "mobilenetv2dilated", "c1_deepsup", run.num_class, fc_dim=320), bias=0.5)
    for part in ("encoder", "decoder"):
        torch.save(getattr(module, part).state_dict(), run.ckpt / f"{part}_epoch_1.pth")
    home = root / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIT_SEMSEG_HOME", str(home))
        cached_onnx_export(TrainedModel("mobilenetv2dilated", "c1_deepsup", run.num_class,
                                        run.ckpt, "epoch_1.pth"))
    return run, home


@pytest.fixture
def onnx_home(varied_run, monkeypatch):
    run, home = varied_run
    monkeypatch.setenv("MIT_SEMSEG_HOME", str(home))
    return run


def _opts(run, *pairs):
    # one scale: test.py's single-scale path; the plain module: the original's arithmetic
    return [*run.overrides(**{"DATASET.imgSizes": "(48,)", "MODEL.fast_inference": "False"}),
            *pairs]


def _margin(probs):
    """Per pixel, the best class's probability minus the second best's."""
    top = probs.topk(2, dim=0).values
    return top[0] - top[1]


def test_test_py_labels_equal_torch_up_to_the_export_tolerance(onnx_home, tmp_path,
                                                               in_process, monkeypatch):
    run = onnx_home
    calls = {"torch": [], "onnxruntime": []}  # per image: (module class, torch probabilities)
    real = test_cli.predict_labels

    def spy(module, img_list, seg_size, device, options):
        probs = None
        if not isinstance(module, OnnxRuntimeSegmenter):
            probs = predict_probs(module, img_list, seg_size, device, options)
        calls[backend].append((type(module), probs))
        return real(module, img_list, seg_size, device, options)

    monkeypatch.setattr(test_cli, "predict_labels", spy)
    labels = {}
    for backend in calls:
        out = tmp_path / backend
        code, log = in_process("test.py", "--imgs", str(run.data / "validation.odgt"),
                               "--gpus", "cpu", "--cfg", str(CFG),
                               *_opts(run, "TEST.result", str(out), "TEST.save_label", "True",
                                      "MODEL.backend", backend))
        assert code == 0, log
        labels[backend] = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
                           for p in sorted((out / "labels").glob("val_*.png"))]
    assert len(labels["onnxruntime"]) == len(labels["torch"]) == len(calls["torch"]) == 3
    assert {kind for kind, _ in calls["onnxruntime"]} == {OnnxRuntimeSegmenter}
    assert OnnxRuntimeSegmenter not in {kind for kind, _ in calls["torch"]}
    classes = set()
    for expected, got, (_, probs) in zip(labels["torch"], labels["onnxruntime"],
                                         calls["torch"]):
        differ = torch.from_numpy(got != expected)
        # a label may differ only where torch's two best classes are within the tolerance
        assert not differ.any() or _margin(probs)[differ].max() <= 2 * EXPORT_TOLERANCE
        assert differ.float().mean() < 1e-3
        classes |= set(np.unique(expected).tolist())
    assert len(classes) > 1  # the comparison covers class boundaries


def test_eval_and_eval_multipro_agree_with_torch_and_eval_multipro_spawns(
        onnx_home, in_process, inline_workers):
    run = onnx_home
    confusion, metrics = {}, {}
    for script, backend in (("eval.py", "torch"), ("eval.py", "onnxruntime"),
                            ("eval_multipro.py", "onnxruntime")):
        workers = ["--workers", "2"] if script == "eval_multipro.py" else []
        code, log = in_process(script, "--cfg", str(CFG), "--gpus", "cpu", *workers,
                               *_opts(run, "DIR", str(run.ckpt), "MODEL.backend", backend))
        assert code == 0, log
        confusion[script, backend] = np.load(run.ckpt / "confusion_matrix.npy")
        metrics[script, backend] = json.loads((run.ckpt / "eval_metrics.json").read_text())
    assert inline_workers == ["spawn"]  # the master exported and ran the model: no fork
    reference = confusion["eval.py", "torch"]
    for key in (("eval.py", "onnxruntime"), ("eval_multipro.py", "onnxruntime")):
        assert metrics[key]["backend"].startswith("onnxruntime ")
        assert confusion[key].sum() == reference.sum() > 0
        assert np.abs(confusion[key] - reference).sum() <= 2e-3 * reference.sum()
    assert metrics["eval.py", "torch"]["backend"].startswith("torch ")


@pytest.mark.parametrize("script,amp_key", [("eval.py", "VAL.amp"), ("test.py", "TEST.amp"),
                                            ("eval_multipro.py", "VAL.amp")])
def test_gpus_and_amp_are_refused_naming_the_key(script, amp_key, onnx_home, tmp_path,
                                                 in_process, monkeypatch):
    run = onnx_home
    imgs = ["--imgs", str(run.data / "validation.odgt")] if script == "test.py" else []
    code, out, err = in_process(script, *imgs, "--cfg", str(CFG), "--gpus", "cpu",
                                *_opts(run, *ONNX, amp_key, "bf16"), streams=True)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"{script}: error: {amp_key} bf16 applies to MODEL.backend torch only; set {amp_key} "
        "'' with onnxruntime")
    # as on a machine with a GPU
    monkeypatch.setattr(common, "resolve_devices", lambda spec: [torch.device("cuda", 0)])
    monkeypatch.setattr("mit_semseg.cli.eval_multipro.resolve_devices",
                        lambda spec: [torch.device("cuda", 0)])
    code, out, err = in_process(script, *imgs, "--cfg", str(CFG), "--gpus", "0",
                                *_opts(run, *ONNX), streams=True)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"{script}: error: MODEL.backend onnxruntime runs on the CPU, not on cuda:0: add "
        "--gpus cpu (or use MODEL.backend torch)")


@pytest.mark.parametrize("script", ["eval.py", "test.py", "eval_multipro.py"])
def test_missing_onnx_packages_name_the_extra(script, tmp_path, in_process, monkeypatch):
    imgs = ["--imgs", str(tmp_path)] if script == "test.py" else []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    code, out, err = in_process(script, *imgs, "--cfg", str(CFG), "--gpus", "cpu", *ONNX,
                                streams=True)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"{script}: error: MODEL.backend onnxruntime needs onnxscript: pip install "
        "'mit_semseg[onnx]' (or use MODEL.backend torch)")
