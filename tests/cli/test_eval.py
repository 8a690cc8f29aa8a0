import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from eval_fixtures import (  # noqa: F401
    CFG,
    NUM_VAL,
    bound_devices,
    in_process,
    run_script,
    tiny_run,
)

from mit_semseg.metrics import scores_from_confusion


def _labelled_pixels(data_dir):
    """Labelled pixels of the validation annotations, read straight from the PNGs."""
    total = 0
    for line in (data_dir / "validation.odgt").read_text().splitlines():
        record = json.loads(line)
        seg = cv2.imread(str(data_dir / record["fpath_segm"]), cv2.IMREAD_UNCHANGED)
        total += int((seg > 0).sum())
    return total


def test_eval_writes_metrics_files(tiny_run):  # noqa: F811
    proc = run_script(
        "eval.py", "--cfg", str(CFG), "--gpu", "cpu",
        *tiny_run.overrides(**{"VAL.visualize": "True"}),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = tiny_run.ckpt
    conf = np.load(ckpt / "confusion_matrix.npy")
    assert conf.shape == (tiny_run.num_class, tiny_run.num_class) and conf.dtype == np.int64
    # every labelled pixel of the original-resolution annotations is counted exactly once
    assert conf.sum() == _labelled_pixels(tiny_run.data)
    metrics = json.loads((ckpt / "eval_metrics.json").read_text())
    scores = scores_from_confusion(conf)
    assert metrics["mean_iou"] == pytest.approx(scores["miou"])
    assert metrics["pixel_accuracy"] == pytest.approx(scores["pixel_acc"])
    assert metrics["num_images"] == NUM_VAL and metrics["processes"] == 1
    names = [c["name"] for c in metrics["per_class"]]
    assert len(names) == tiny_run.num_class and not any(n.startswith("class_") for n in names)
    assert (ckpt / "class_iou.csv").is_file() and (ckpt / "confusion_matrix.png").is_file()
    assert len(list((ckpt / "result").glob("*.png"))) == NUM_VAL
    out = proc.stdout
    assert f"Mean IoU: {scores['miou']:.4f}, Accuracy: {100 * scores['pixel_acc']:.2f}%" in out
    assert "Overall:" in out and "Inference Time:" in out
    assert out.count("class [") == tiny_run.num_class and names[0] in out


def test_eval_missing_checkpoint_exits_with_clear_error(tiny_run, in_process):  # noqa: F811
    code, out = in_process(
        "eval.py", "--cfg", str(CFG), "--gpu", "cpu",
        *tiny_run.overrides(**{"VAL.checkpoint": "epoch_99.pth"}),
    )
    assert code == 2
    assert "encoder_epoch_99.pth" in out and "decoder_epoch_99.pth" in out
    assert "Traceback" not in out


def test_eval_bad_device_and_bad_key(tiny_run, in_process):  # noqa: F811
    code, out = in_process("eval.py", "--cfg", str(CFG), "--gpu", "tpu", *tiny_run.overrides())
    assert code == 2 and "tpu" in out
    code, out = in_process("eval.py", "--cfg", str(CFG), "--gpu", "cpu", "VAL.chekpoint", "x")
    assert code == 2 and "VAL.chekpoint" in out
    code, out = in_process("eval.py", "--cfg", str(CFG), "--gpus", "cpu",
                           *tiny_run.overrides(**{"VAL.amp": "fp16"}))
    assert code == 2
    assert "eval.py: error: VAL.amp 'fp16' needs a CUDA device; use VAL.amp bf16" in out


_ORIGINAL_EVAL = """
import json, sys, types
import numpy as np, torch
from mit_semseg.dataset import ValDataset
from mit_semseg.models import ModelBuilder, SegmentationModule
from mit_semseg.utils import AverageMeter, accuracy, intersectionAndUnion
a = json.loads(sys.argv[1])
opt = types.SimpleNamespace(
    imgSizes=tuple(a["sizes"]), imgMaxSize=a["max_size"], padding_constant=a["pad"])
dataset = ValDataset(a["root"], a["odgt"], opt)
enc = ModelBuilder.build_encoder(arch=a["enc"], fc_dim=a["fc_dim"], weights=a["enc_w"])
dec = ModelBuilder.build_decoder(arch=a["dec"], fc_dim=a["fc_dim"], num_class=a["num_class"],
                                 weights=a["dec_w"], use_softmax=True)
module = SegmentationModule(enc, dec, torch.nn.NLLLoss(ignore_index=-1)).eval()
acc_meter, inter_meter, union_meter = AverageMeter(), AverageMeter(), AverageMeter()
with torch.no_grad():
    for i in range(len(dataset)):
        sample = dataset[i]
        label = sample["seg_label"][0].numpy()
        scores = torch.zeros(1, a["num_class"], *label.shape)
        for img in sample["img_data"]:
            scores = scores + module({"img_data": img}, segSize=label.shape) / len(opt.imgSizes)
        pred = scores.argmax(1)[0].numpy()
        acc, pix = accuracy(pred, label)
        inter, union = intersectionAndUnion(pred, label, a["num_class"])
        acc_meter.update(acc, pix)
        inter_meter.update(inter)
        union_meter.update(union)
iou = inter_meter.sum / (union_meter.sum + 1e-10)
print(json.dumps({"iou": iou.tolist(), "acc": acc_meter.average()}))
"""


@pytest.mark.slow
def test_eval_matches_the_original_pipeline(tiny_run, upstream_path):  # noqa: F811
    """The original package's dataset, models and metric code give the same numbers."""
    from mit_semseg.config import load_config

    cfg = load_config(CFG, tiny_run.overrides())
    proc = run_script("eval.py", "--cfg", str(CFG), "--gpu", "cpu", *tiny_run.overrides())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ours = json.loads((tiny_run.ckpt / "eval_metrics.json").read_text())
    args = {
        "root": str(tiny_run.data) + "/",
        "odgt": cfg.DATASET.list_val,
        "sizes": list(cfg.DATASET.imgSizes),
        "max_size": cfg.DATASET.imgMaxSize,
        "pad": cfg.DATASET.padding_constant,
        "enc": cfg.MODEL.arch_encoder,
        "dec": cfg.MODEL.arch_decoder,
        "fc_dim": cfg.MODEL.fc_dim,
        "num_class": tiny_run.num_class,
        "enc_w": str(tiny_run.ckpt / "encoder_epoch_1.pth"),
        "dec_w": str(tiny_run.ckpt / "decoder_epoch_1.pth"),
    }
    ref = subprocess.run(
        [sys.executable, "-c", _ORIGINAL_EVAL, json.dumps(args)],
        cwd=upstream_path,  # keeps our package (same import name) off sys.path
        env=dict(os.environ, PYTHONPATH=str(upstream_path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = json.loads(ref.stdout.strip().splitlines()[-1])
    iou = [c["iou"] for c in ours["per_class"]]
    np.testing.assert_allclose(iou, expected["iou"], atol=2e-3)
    assert ours["mean_iou"] == pytest.approx(np.mean(expected["iou"]), abs=1e-3)
    assert ours["pixel_accuracy"] == pytest.approx(expected["acc"], abs=1e-3)


def test_eval_binds_its_gpu_before_any_work(tiny_run, in_process, bound_devices, monkeypatch):  # noqa: F811
    """Issue 17.4: `--gpu 1` makes cuda:1 the current device before the model is loaded, so
    nothing (pinned memory, lazy contexts) lands on GPU 0."""
    from mit_semseg.cli import common
    from mit_semseg.cli import eval as eval_cli

    monkeypatch.setattr(common, "single_device", lambda spec, hint="": torch.device("cuda", 1))

    def evaluate_shard(job, device, **kwargs):
        raise FileNotFoundError(f"stop here; bound so far: {bound_devices}")

    monkeypatch.setattr(eval_cli, "evaluate_shard", evaluate_shard)
    code, out = in_process("eval.py", "--cfg", str(CFG), "--gpu", "1", *tiny_run.overrides())
    assert code == 2 and "stop here; bound so far: ['cuda:1']" in out
