"""Accuracy and speed of our inference options on a trained model (no original needed).

Evaluates one trained checkpoint with our evaluation loop (the one ``eval.py`` runs) three
ways: the plain fp32 model (``MODEL.fast_inference False``, the original's arithmetic), the
default fast fp32 path (BatchNorm folded, channels-last) and the fast path under bf16 autocast
(``VAL.amp bf16``). It reports mIoU and pixel accuracy of each with the difference from the
plain run, and seconds per image (median of ``--repeats`` alternating runs, same process).

The default is the synthetic demo model; make it first with ``bash scripts/demo.sh`` (or
point ``--cfg``/``--dir``/``--data`` at any trained model and its validation set).

    python benchmarks/bench_precision.py [--cfg config/synthetic-mobilenetv2dilated-c1_deepsup.yaml]
        [--dir ckpt/synthetic-mobilenetv2dilated-c1_deepsup] [--data data/synthetic]
        [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import common

sys.path.insert(0, str(common.REPO_ROOT))

import torch  # noqa: E402

from mit_semseg.cli.eval import eval_job  # noqa: E402
from mit_semseg.config import load_config  # noqa: E402
from mit_semseg.engine.evaluation import evaluate_shard  # noqa: E402
from mit_semseg.metrics import scores_from_confusion  # noqa: E402

DEMO_CFG = "config/synthetic-mobilenetv2dilated-c1_deepsup.yaml"
# label -> config overrides
VARIANTS = {
    "plain fp32 (fast_inference False)": ["MODEL.fast_inference", "False"],
    "fast fp32 (default)": ["MODEL.fast_inference", "True"],
    "fast + bf16 autocast": ["MODEL.fast_inference", "True", "VAL.amp", "bf16"],
}
MIOU_TOLERANCE = 1e-4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", default=DEMO_CFG)
    parser.add_argument("--dir", default="ckpt/synthetic-mobilenetv2dilated-c1_deepsup",
                        help="folder with the trained encoder_/decoder_ files (DIR)")
    parser.add_argument("--data", default="data/synthetic",
                        help="dataset root holding validation.odgt")
    parser.add_argument("--checkpoint", default=None, help="VAL.checkpoint (default: config's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = common.REPO_ROOT
    data = Path(args.data) if Path(args.data).is_absolute() else root / args.data
    ckpt = Path(args.dir) if Path(args.dir).is_absolute() else root / args.dir
    base = ["DIR", str(ckpt), "DATASET.root_dataset", str(data),
            "DATASET.list_val", str(data / "validation.odgt"), "VAL.workers", "0",
            "VAL.visualize", "False", "DEVICE", "cpu"]
    if args.checkpoint:
        base += ["VAL.checkpoint", args.checkpoint]
    cfg_path = root / args.cfg if not Path(args.cfg).is_absolute() else Path(args.cfg)
    configs = {label: load_config(cfg_path, base + extra) for label, extra in VARIANTS.items()}
    for path in (data / "validation.odgt",
                 ckpt / f"encoder_{next(iter(configs.values())).VAL.checkpoint}"):
        if not path.is_file():
            sys.exit(f"{path} not found: run `bash scripts/demo.sh` first, or pass --cfg, "
                     "--dir and --data of a trained model")
    cpu = torch.device("cpu")
    scores, times = {}, {label: [] for label in VARIANTS}
    for repeat in range(args.repeats):
        labels = list(VARIANTS) if repeat % 2 == 0 else list(reversed(VARIANTS))
        for label in labels:
            result = evaluate_shard(eval_job(configs[label]), cpu)
            times[label].append(result.seconds / result.num_images)
            scores.setdefault(label, scores_from_confusion(result.confusion))
            print(f"  repeat {repeat + 1}/{args.repeats} {label}: "
                  f"{times[label][-1] * 1e3:.1f} ms/image, mIoU {scores[label]['miou']:.6f}",
                  flush=True)
    plain = next(iter(VARIANTS))
    plain_s = statistics.median(times[plain])
    rows, notes = [], []
    for label in VARIANTS:
        s = scores[label]
        d_miou = s["miou"] - scores[plain]["miou"]
        d_acc = s["pixel_acc"] - scores[plain]["pixel_acc"]
        seconds = statistics.median(times[label])
        rows.append([label, f"{s['miou']:.6f}", f"{d_miou:+.1e}", f"{100 * s['pixel_acc']:.4f}",
                     f"{100 * d_acc:+.1e}", f"{seconds * 1e3:.1f}",
                     f"**{seconds / plain_s:.2f}x**",
                     ", ".join(f"{t * 1e3:.1f}" for t in times[label])])
        if label != plain and "bf16" not in label:
            ok = abs(d_miou) <= MIOU_TOLERANCE
            notes.append(f"- {label}: |mIoU difference| {abs(d_miou):.1e} -> "
                         f"{'PASS' if ok else 'FAIL'} (tolerance {MIOU_TOLERANCE:g})")
    cfg0 = configs[plain]
    n_images = sum(1 for _ in open(data / "validation.odgt", encoding="utf-8"))
    command = (f"python benchmarks/bench_precision.py --cfg {args.cfg} --dir {args.dir} "
               f"--data {args.data} --repeats {args.repeats} --threads {args.threads}")
    common.report("precision", "Inference options on a trained model "
                  "(`benchmarks/bench_precision.py`)", args, command, [
        f"`{cfg0.MODEL.arch_encoder}` + `{cfg0.MODEL.arch_decoder}` from `{args.dir}` "
        f"(checkpoint {cfg0.VAL.checkpoint}), {n_images} validation images of `{args.data}`, "
        f"scales {tuple(cfg0.DATASET.imgSizes)}, our evaluation loop (as `eval.py`); "
        f"ms/image = median of {args.repeats} alternating runs in one process.",
        "",
        common.markdown_table(["variant", "mIoU", "vs plain", "pixel acc. (%)", "vs plain",
                               "ms/image", "time vs plain", "runs (ms/image)"], rows),
        "",
        *notes,
    ])


if __name__ == "__main__":
    main()
