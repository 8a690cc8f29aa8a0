"""Our models against the original mit_semseg 1.0.0 (same weights, same inputs).

The original shares our import name, so it runs in a subprocess (``upstream_runner.py``) with
only its own folder on PYTHONPATH; weights and tensors travel through files. Skipped when the
original is not installed (see ``docs/models.md`` for the install command).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from mit_semseg.models import build_segmentation_model

# Under pytest -n (scripts/test.sh) one worker runs this whole module, so that the expensive
# module fixture, which runs every case through the original, runs once.
pytestmark = pytest.mark.xdist_group("upstream_equivalence")

RUNNER = Path(__file__).with_name("upstream_runner.py")
NUM_CLASS = 11
TOLERANCE = 1e-5

# (name, encoder, decoder, fc_dim)
CASES = [
    ("r18d_c1ds", "resnet18dilated", "c1_deepsup", 512),
    ("r50d_ppmds", "resnet50dilated", "ppm_deepsup", 2048),
    ("mnv2_c1ds", "mobilenetv2dilated", "c1_deepsup", 320),
    ("r50_upernet", "resnet50", "upernet", 2048),
    ("rx101_c1", "resnext101", "c1", 2048),
    ("hrnetv2_c1", "hrnetv2", "c1", 720),
]


def _randomise_norm_layers(model):
    # Non-trivial statistics and affine parameters, so eval-mode BatchNorm is really compared.
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


@pytest.fixture(scope="module")
def comparison(upstream_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("equivalence")
    torch.manual_seed(0)
    inputs = {"train_img": torch.randn(2, 3, 64, 64), "eval_img": torch.randn(1, 3, 33, 49),
              "seg_size": (65, 97)}
    ours, cases = {}, []
    for index, (name, encoder, decoder, fc_dim) in enumerate(CASES):
        # Deep supervision (weight 0.4, as the original's train.py) comes from the decoder;
        # the plain heads, whose training arithmetic is the original's
        model = build_segmentation_model(encoder, decoder, NUM_CLASS, fc_dim=fc_dim,
                                         deep_sup_scale=0.4, factored_heads=False)
        stride = model.output_stride
        label = torch.randint(-1, NUM_CLASS, (2, 64 // stride, 64 // stride))
        inputs[f"label_{name}"] = label
        _randomise_norm_layers(model)
        paths = {part: tmp / f"{name}_{part}.pth" for part in ("encoder", "decoder")}
        torch.save(model.encoder.state_dict(), paths["encoder"])
        torch.save(model.decoder.state_dict(), paths["decoder"])
        with torch.no_grad():
            probs = model.eval()({"img_data": inputs["eval_img"]}, segSize=inputs["seg_size"])
        model.train()
        torch.manual_seed(100 + index)  # same dropout masks on both sides
        loss, acc = model({"img_data": inputs["train_img"], "seg_label": label})
        ours[name] = {"probs": probs, "loss": loss.detach(), "acc": acc}
        cases.append({"name": name, "encoder": encoder, "decoder": decoder, "fc_dim": fc_dim,
                      "num_class": NUM_CLASS, "encoder_weights": str(paths["encoder"]),
                      "decoder_weights": str(paths["decoder"]), "seed": 100 + index})
    spec, out = tmp / "spec.pt", tmp / "upstream_out.pt"
    torch.save({"inputs": inputs, "cases": cases}, spec)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(upstream_path)
    result = subprocess.run([sys.executable, str(RUNNER), str(spec), str(out)], cwd=tmp, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return ours, torch.load(out)


@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_eval_probabilities_equal_the_originals(comparison, name):
    ours, theirs = comparison
    assert ours[name]["probs"].shape == theirs[name]["probs"].shape == (1, NUM_CLASS, 65, 97)
    diff = (ours[name]["probs"] - theirs[name]["probs"]).abs().max().item()
    print(f"{name}: eval probabilities max |diff| {diff:.2e}")
    assert diff <= TOLERANCE, f"{name}: max |diff| {diff:.3g}"


@pytest.mark.parametrize("name", [case[0] for case in CASES])
def test_train_loss_and_accuracy_equal_the_originals(comparison, name):
    ours, theirs = comparison
    diff = abs(ours[name]["loss"].item() - theirs[name]["loss"].item())
    print(f"{name}: train loss {ours[name]['loss'].item():.6f}, |diff| {diff:.2e}")
    assert diff <= TOLERANCE, f"{name}: loss {ours[name]['loss']} vs {theirs[name]['loss']}"
    assert ours[name]["acc"].item() == pytest.approx(theirs[name]["acc"].item(), abs=1e-6)
