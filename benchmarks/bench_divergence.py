"""How far two training runs drift apart, step by step (no comparison with the original).

Trains the synthetic config (MobileNetV2-dilated + C1-deepsup, lr 0.02, 2 devices x 2 images,
short sides 40-64 px so that the devices get different sizes) for ``--steps`` steps, one
"epoch" per step so that the weights of every step are written, three times:

* ``--gpus cpux2`` from saved initial weights;
* the same with one initial weight moved by ``--nudge`` (1e-7);
* ``torchrun --nproc_per_node 2`` (gloo) from the first weights.

It reports, after each step, the largest absolute difference over all weights and BatchNorm
buffers between the first run and each other. The first column shows how fast this training
amplifies a tiny difference (why launch modes must agree bit for bit to agree at all); the
second that torchrun and one process with two replicas do.

    python benchmarks/bench_divergence.py [--steps 6] [--nudge 1e-7] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import common

CONFIG = common.REPO_ROOT / "config" / "synthetic-mobilenetv2dilated-c1_deepsup.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(launcher: list[str], gpus: str, out: Path, data: Path, weights: dict[str, Path],
           steps: int) -> None:
    from mit_semseg.data.synthetic import SYNTHETIC_NUM_CLASS

    opts = {"DIR": out, "DATASET.root_dataset": data,
            "DATASET.list_train": data / "training.odgt",
            "DATASET.list_val": data / "validation.odgt",
            "DATASET.num_class": SYNTHETIC_NUM_CLASS, "DATASET.imgSizes": "(40,48,56,64)",
            "DATASET.imgMaxSize": 64, "MODEL.weights_encoder": weights["encoder"],
            "MODEL.weights_decoder": weights["decoder"], "TRAIN.num_epoch": steps,
            "TRAIN.epoch_iters": 1, "TRAIN.batch_size_per_gpu": 2, "TRAIN.workers": 0,
            "TRAIN.checkpoint_every": 0}
    argv = [sys.executable, *launcher, "train.py", "--cfg", str(CONFIG), "--gpus", gpus]
    argv += [str(token) for pair in opts.items() for token in pair]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(common.REPO_ROOT))
    result = subprocess.run(argv, cwd=common.REPO_ROOT, env=env, capture_output=True,
                            text=True)
    if result.returncode:
        sys.exit(f"training failed:\n{result.stderr[-3000:]}")


def _max_difference(a: Path, b: Path, epoch: int) -> float:
    import torch

    worst = 0.0
    for name in ("encoder", "decoder"):
        x = torch.load(a / f"{name}_epoch_{epoch}.pth", weights_only=True)
        y = torch.load(b / f"{name}_epoch_{epoch}.pth", weights_only=True)
        for key, value in x.items():
            if value.numel():
                worst = max(worst, (value.double() - y[key].double()).abs().max().item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--nudge", type=float, default=1e-7,
                        help="added to one weight of the first convolution")
    parser.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    args = parser.parse_args()
    args.threads = 1
    sys.path.insert(0, str(common.REPO_ROOT))
    import torch

    from mit_semseg.config import load_config
    from mit_semseg.data.synthetic import SYNTHETIC_NUM_CLASS, generate
    from mit_semseg.models import build_segmentation_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "data", num_train=8, num_val=2, seed=0, min_size=48, max_size=72)
        cfg = load_config(CONFIG)
        torch.manual_seed(0)
        net = build_segmentation_model(cfg.MODEL.arch_encoder, cfg.MODEL.arch_decoder,
                                       SYNTHETIC_NUM_CLASS, fc_dim=cfg.MODEL.fc_dim,
                                       pretrained=False)
        weights = {"encoder": root / "encoder.pth", "decoder": root / "decoder.pth"}
        torch.save(net.encoder.state_dict(), weights["encoder"])
        torch.save(net.decoder.state_dict(), weights["decoder"])
        nudged = net.encoder.state_dict()
        first_conv = next(k for k, v in nudged.items() if v.dim() == 4)
        nudged[first_conv].view(-1)[0] += args.nudge
        torch.save(nudged, root / "nudged.pth")

        runs = {"base": ([], "cpux2", weights),
                "nudged": ([], "cpux2", {**weights, "encoder": root / "nudged.pth"}),
                "torchrun": (["-m", "torch.distributed.run", "--nproc_per_node", "2",
                              "--master_addr", "127.0.0.1", "--master_port",
                              str(_free_port())], "cpu", weights)}
        for name, (launcher, gpus, init) in runs.items():
            print(f"training {name} ...", flush=True)
            _train(launcher, gpus, root / name, root / "data", init, args.steps)
        rows = [[step, f"{_max_difference(root / 'base', root / 'nudged', step):.3g}",
                 f"{_max_difference(root / 'base', root / 'torchrun', step):.3g}"]
                for step in range(1, args.steps + 1)]

    lines = [
        f"Synthetic config, lr 0.02, 2 devices x 2 images, {args.steps} steps; largest "
        "absolute difference over every weight and BatchNorm buffer after each step.",
        "",
        common.markdown_table(
            ["step", f"`cpux2` vs `cpux2` from weights {args.nudge:g} apart",
             "`torchrun --nproc_per_node 2` vs `cpux2`"], rows),
    ]
    command = f"python benchmarks/bench_divergence.py --steps {args.steps} --nudge {args.nudge:g}"
    common.report("divergence", "Divergence of launch modes (`benchmarks/bench_divergence.py`)",
                  args, command, lines)


if __name__ == "__main__":
    main()
