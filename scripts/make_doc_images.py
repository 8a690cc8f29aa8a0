"""Regenerates the example pictures in docs/images/ with the real scripts, on the CPU.

    python scripts/make_doc_images.py            # a few minutes on the CPU

In a temporary folder it writes a small synthetic dataset, trains the demo's model
(``config/synthetic-mobilenetv2dilated-c1_deepsup.yaml``) for a short schedule with
``train.py``, evaluates it with ``eval.py VAL.visualize True`` and segments one validation image
with ``test.py``; then it copies one picture of each kind into docs/images/:

* ``validation_panel.png``  eval.py's picture of one validation image (``DIR/result/``)
* ``test_panel.png``        test.py's picture of the same image
* ``training_curves.png``   ``DIR/training_curves.png``
* ``confusion_matrix.png``  ``DIR/confusion_matrix.png``

The short schedule leaves the model less accurate than the demo's, so the pictures also show
some mistakes. The copies are reduced to 256 colours (no dithering), which keeps them at a fifth
of the size and looks the same.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "config" / "synthetic-mobilenetv2dilated-c1_deepsup.yaml"
RUN_NAME = "synthetic-mobilenetv2dilated-c1_deepsup"


def run(args: list[str], env: dict) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, check=True)


def save_small(source: Path, target: Path) -> None:
    """Copies a PNG reduced to its 256 most used colours (the pictures have few of them)."""
    from PIL import Image

    with Image.open(source) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                              dither=Image.Dither.NONE)
    small.save(target, format="PNG", optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "images",
                        help="where the pictures go (default: docs/images)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--epoch-iters", type=int, default=40)
    parser.add_argument("--image", type=int, default=2,
                        help="which validation image to show (1-based, default 2)")
    args = parser.parse_args()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO_ROOT))
    with tempfile.TemporaryDirectory(prefix="mit_semseg_doc_images_") as tmp:
        data, ckpt, test_out = Path(tmp) / "data", Path(tmp) / RUN_NAME, Path(tmp) / "test"
        paths = ["DIR", str(ckpt), "DATASET.root_dataset", str(data),
                 "DATASET.list_train", str(data / "training.odgt"),
                 "DATASET.list_val", str(data / "validation.odgt")]
        checkpoint = ["VAL.checkpoint", f"epoch_{args.epochs}.pth",
                      "TEST.checkpoint", f"epoch_{args.epochs}.pth"]
        run(["-m", "mit_semseg.data.synthetic", "--out", str(data), "--num-train", "100",
             "--num-val", str(max(args.image, 4)), "--seed", "0"], env)
        run(["train.py", "--cfg", str(CONFIG), "--gpus", "cpu", *paths,
             "TRAIN.num_epoch", str(args.epochs), "TRAIN.epoch_iters", str(args.epoch_iters),
             "TRAIN.disp_iter", "5"], env)
        run(["eval.py", "--cfg", str(CONFIG), "--gpu", "cpu", *paths, *checkpoint,
             "VAL.visualize", "True"], env)
        image = sorted((data / "images" / "validation").iterdir())[args.image - 1]
        run(["test.py", "--imgs", str(image), "--cfg", str(CONFIG), "--gpu", "cpu", *paths,
             *checkpoint, "TEST.result", str(test_out)], env)
        args.out.mkdir(parents=True, exist_ok=True)
        copies = {
            "validation_panel.png": ckpt / "result" / f"{image.stem}.png",
            "test_panel.png": test_out / f"{image.stem}.png",
            "training_curves.png": ckpt / "training_curves.png",
            "confusion_matrix.png": ckpt / "confusion_matrix.png",
        }
        for name, source in copies.items():
            save_small(source, args.out / name)
            print(f"{args.out / name}  ({(args.out / name).stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
