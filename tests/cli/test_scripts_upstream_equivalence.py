"""eval.py and test.py against the original 1.0.0's procedures, from image files to numbers.

The original runs once per module in a subprocess (``upstream_eval_runner.py``, with only
``.upstream/`` on its path; skipped when absent, ``scripts/test.sh`` installs it). It writes the
checkpoints (random weights, realistic BatchNorm statistics) and predicts and scores the same
files with its own datasets, models and metric helpers; we load its checkpoint and run our
eval.py / test.py with ``MODEL.fast_inference False``. Inputs are bit-identical (same resize
filter, same normalisation arithmetic), and with the same number of threads on both sides
(oneDNN's convolutions sum in a thread-dependent order) so are the probabilities: the
predictions must agree on every pixel, not only nearly.

Files: JPEGs and PNGs, landscape and portrait, 41-117 px, one below the smallest scale (it is
enlarged at every scale); the others are shrunk at the small scales and enlarged at the large.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_fixtures import REPO_ROOT, in_process  # noqa: F401
from PIL import Image

from mit_semseg.config import load_config

RUNNER = Path(__file__).with_name("upstream_eval_runner.py")
NUM_CLASS = 12
DATASET = {"imgSizes": [56, 72, 96], "imgMaxSize": 120, "padding_constant": 8}
# (file, height, width): short sides 41..83 against scales 56..96
IMAGES = [("land.jpg", 71, 97), ("port.png", 103, 59), ("small.png", 41, 67),
          ("port2.jpg", 117, 83)]
# (name, encoder, decoder, fc_dim, the repository config of that pair)
MODELS = [("r18_ppm", "resnet18dilated", "ppm_deepsup", 512,
           "ade20k-resnet18dilated-ppm_deepsup.yaml"),
          ("mnv2_c1", "mobilenetv2dilated", "c1_deepsup", 320,
           "ade20k-mobilenetv2dilated-c1_deepsup.yaml")]
CHECKPOINT = "epoch_1.pth"


def _picture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Flat-ish regions with soft edges, a light gradient and sensor-like noise."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.empty((height, width, 3))
    image[:] = rng.uniform(40, 200, 3)
    image += 60 * np.stack([x, y, x * y], axis=-1)
    for _ in range(5):
        cy, cx, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.1, 0.4)]
        inside = 1 / (1 + np.exp(((y - cy) ** 2 + (x - cx) ** 2 - r * r) * 200))
        image += inside[..., None] * (rng.uniform(0, 255, 3) - image)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _label(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blocks of classes 1..NUM_CLASS and unlabelled (0) pixels."""
    blocks = rng.integers(0, NUM_CLASS + 1, (height // 9 + 1, width // 9 + 1), dtype=np.uint8)
    return blocks.repeat(9, 0).repeat(9, 1)[:height, :width]


@pytest.fixture(scope="module")
def compared(upstream_path, tmp_path_factory):
    """The files, the checkpoints and the original's predictions and metrics."""
    root = tmp_path_factory.mktemp("upstream_eval")
    rng = np.random.default_rng(0)
    records = []
    for name, height, width in IMAGES:
        Image.fromarray(_picture(rng, height, width)).save(root / name, quality=90)
        label_name = Path(name).with_suffix(".label.png").name
        Image.fromarray(_label(rng, height, width), "L").save(root / label_name)
        records.append({"fpath_img": name, "fpath_segm": label_name, "width": width,
                        "height": height})
    odgt = root / "validation.odgt"
    odgt.write_text("".join(json.dumps(r) + "\n" for r in records))
    models = [{"name": name, "encoder": encoder, "decoder": decoder, "fc_dim": fc_dim,
               "dir": str(root / name), "checkpoint": CHECKPOINT, "seed": seed}
              for seed, (name, encoder, decoder, fc_dim, _) in enumerate(MODELS)]
    for model in models:
        os.makedirs(model["dir"])
    spec = {"root": str(root), "odgt": str(odgt), "num_class": NUM_CLASS, "models": models,
            "test_paths": [str(root / name) for name, *_ in IMAGES], **DATASET}
    spec_path, out_path = root / "spec.json", root / "upstream.pt"
    spec_path.write_text(json.dumps(spec))
    result = subprocess.run(
        [sys.executable, str(RUNNER), str(spec_path), str(out_path)],
        cwd=upstream_path,  # keeps our package (same import name) off sys.path
        env=dict(os.environ, PYTHONPATH=str(upstream_path), OMP_NUM_THREADS="1"),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return root, torch.load(out_path, weights_only=True)


@pytest.fixture(autouse=True)
def one_thread():
    """The runner's thread count (1) in this process too."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _overrides(root: Path, name: str, **extra: str) -> list[str]:
    pairs = {"DIR": str(root / name), "DATASET.root_dataset": str(root),
             "DATASET.list_val": str(root / "validation.odgt"),
             "DATASET.num_class": str(NUM_CLASS),
             "DATASET.imgSizes": str(tuple(DATASET["imgSizes"])),
             "DATASET.imgMaxSize": str(DATASET["imgMaxSize"]),
             "DATASET.padding_constant": str(DATASET["padding_constant"]),
             "VAL.checkpoint": CHECKPOINT, "TEST.checkpoint": CHECKPOINT, "VAL.workers": "0",
             "MODEL.fast_inference": "False", **extra}
    return [token for pair in pairs.items() for token in pair]


def _config_file(name: str) -> str:
    return str(REPO_ROOT / "config" / next(m[4] for m in MODELS if m[0] == name))


@pytest.mark.parametrize("name", [m[0] for m in MODELS])
def test_eval_predicts_the_originals_labels_on_every_pixel(compared, name):
    """Our eval path (EvalJob from the config, its ValDataset, the loaded module,
    predict_probs) against the original's eval loop, pixel by pixel."""
    from mit_semseg.cli.eval import eval_job
    from mit_semseg.inference.predict import predict_probs

    root, upstream = compared
    job = eval_job(load_config(_config_file(name), _overrides(root, name)))
    cpu = torch.device("cpu")
    module = job.model.load(cpu)
    dataset = job.dataset()
    theirs = upstream[name]["val_preds"]
    assert len(dataset) == len(theirs) == len(IMAGES)
    classes = set()
    for index in range(len(dataset)):
        sample = dataset[index]
        label = sample["seg_label"][0]
        probs = predict_probs(module, sample["img_data"], label.shape, cpu)
        diff = (probs - upstream[name]["val_scores"][index]).abs().max().item()
        assert diff == 0, f"{name} {IMAGES[index][0]}: probabilities differ by {diff:.3g}"
        pred = probs.argmax(0)
        assert pred.shape == theirs[index].shape == (IMAGES[index][1], IMAGES[index][2])
        different = int((pred != theirs[index]).sum())
        assert different == 0, f"{name} {IMAGES[index][0]}: {different} pixels differ"
        classes |= set(pred.unique().tolist())
    assert len(classes) >= 3, f"degenerate model: predicts only {classes}"


@pytest.mark.parametrize("name", [m[0] for m in MODELS])
def test_eval_py_metrics_equal_the_originals(compared, name, in_process):  # noqa: F811
    root, upstream = compared
    theirs = upstream[name]
    code, out = in_process("eval.py", "--cfg", _config_file(name), "--gpus", "cpu",
                           *_overrides(root, name))
    assert code == 0, out
    metrics = json.loads((root / name / "eval_metrics.json").read_text())
    confusion = np.load(root / name / "confusion_matrix.npy")
    # the same pixels are right and wrong: intersections and unions are equal integers
    np.testing.assert_array_equal(np.diag(confusion), theirs["intersection"].numpy())
    np.testing.assert_array_equal(confusion.sum(0) + confusion.sum(1) - np.diag(confusion),
                                  theirs["union"].numpy())
    assert [c["iou"] for c in metrics["per_class"]] == theirs["iou"].tolist()
    assert metrics["mean_iou"] == theirs["mean_iou"]
    # the original averages per-image accuracies weighted by pixel counts: equal up to rounding
    assert metrics["pixel_accuracy"] == pytest.approx(theirs["pixel_accuracy"], rel=1e-12)
    assert theirs["summary"] in out  # "Mean IoU: x.xxxx, Accuracy: yy.yy%"
    assert 0 < theirs["mean_iou"] < 1
    assert metrics["fast_inference"] is False and metrics["precision"] == "fp32"
    assert metrics["backend"].startswith(f"torch {torch.__version__}, CPU")


@pytest.mark.parametrize("name", [m[0] for m in MODELS])
def test_test_py_label_maps_equal_the_originals(compared, name, in_process,  # noqa: F811
                                                tmp_path):
    root, upstream = compared
    paths = [str(root / image) for image, *_ in IMAGES]
    code, out = in_process("test.py", "--imgs", *paths, "--cfg", _config_file(name), "--gpus",
                           "cpu", *_overrides(root, name, **{"TEST.result": str(tmp_path),
                                                             "TEST.save_label": "True"}))
    assert code == 0, out
    for (image, height, width), theirs in zip(IMAGES, upstream[name]["test_preds"]):
        saved = np.asarray(Image.open(tmp_path / "labels" / f"{Path(image).stem}.png"))
        assert saved.shape == tuple(theirs.shape) == (height, width)
        different = int((saved.astype(np.int64) - 1 != theirs.numpy()).sum())
        assert different == 0, f"{name} {image}: {different} pixels differ"
