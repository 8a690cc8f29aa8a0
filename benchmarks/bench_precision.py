"""How much the inference options change the numbers (and what they cost), no original needed.

Two measurements, each written to its own section of ``benchmarks/RESULTS.md``:

``demo`` (section ``precision``): one trained checkpoint (default: the synthetic demo model;
make it first with ``bash scripts/demo.sh``) evaluated with our evaluation loop (the one
``eval.py`` runs) three ways: the plain fp32 model (``MODEL.fast_inference False``, the
original's arithmetic), the default fast fp32 path (BatchNorm folded, channels-last) and the
fast path under bf16 autocast (``VAL.amp bf16``). Reports mIoU and pixel accuracy with the
difference from the plain run, the largest probability difference and the share of pixels
predicted alike, and seconds per image (median of ``--repeats`` alternating runs).

``archs`` (section ``precision_archs``): the fast path against the plain one on every
architecture of the original's released models, 150 classes, with realistic BatchNorm
statistics: random weights and random affine parameters (gamma in [0.5, 1.5], beta in
[-0.3, 0.3], so every channel is scaled and shifted differently), then running statistics
*measured* as cumulative means over train-mode passes on the benchmark images, so that each
eval-mode BatchNorm gives about zero mean and unit variance per channel, as in a trained
network. (Random running statistics would not match the activations: these grow or shrink
from layer to layer and saturate the softmax, which hides rounding differences.) Both paths
are loaded from the same files by ``TrainedModel.load`` and run through
``predict_probs`` at several scales, as ``eval.py`` does.

    python benchmarks/bench_precision.py [--part demo|archs|all] [--archs r18d_c1ds ...]
        [--cfg ...] [--dir ...] [--data ...] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import common

sys.path.insert(0, str(common.REPO_ROOT))

import torch  # noqa: E402

from mit_semseg.cli.eval import eval_job  # noqa: E402
from mit_semseg.config import load_config  # noqa: E402
from mit_semseg.inference.evaluation import evaluate_shard  # noqa: E402
from mit_semseg.inference.predict import PredictOptions, predict_probs  # noqa: E402
from mit_semseg.inference.trained_model import TrainedModel  # noqa: E402
from mit_semseg.metrics import scores_from_confusion  # noqa: E402

DEMO_CFG = "config/synthetic-mobilenetv2dilated-c1_deepsup.yaml"
# label -> config overrides
VARIANTS = {
    "plain fp32 (fast_inference False)": ["MODEL.fast_inference", "False"],
    "fast fp32 (default)": ["MODEL.fast_inference", "True"],
    "fast + bf16 autocast": ["MODEL.fast_inference", "True", "VAL.amp", "bf16"],
}
MIOU_TOLERANCE = 1e-4
# the original's released ADE20K models: name -> (encoder, decoder)
ARCHS = {
    "mnv2d_c1ds": ("mobilenetv2dilated", "c1_deepsup"),
    "mnv2d_ppmds": ("mobilenetv2dilated", "ppm_deepsup"),
    "r18d_c1ds": ("resnet18dilated", "c1_deepsup"),
    "r18d_ppmds": ("resnet18dilated", "ppm_deepsup"),
    "r50d_ppmds": ("resnet50dilated", "ppm_deepsup"),
    "r101d_ppmds": ("resnet101dilated", "ppm_deepsup"),
    "r50_upernet": ("resnet50", "upernet"),
    "r101_upernet": ("resnet101", "upernet"),
    "hrnetv2_c1": ("hrnetv2", "c1"),
}
NUM_CLASS = 150


def agreement(reference, module, samples, device, amp: str = "") -> dict:
    """Largest probability difference and pixels predicted alike, ``module`` vs ``reference``.

    ``samples`` yield ``img_data`` (one tensor per scale) and ``seg_size``.
    """
    max_diff, equal, total = 0.0, 0, 0
    for sample in samples:
        ref = predict_probs(reference, sample["img_data"], sample["seg_size"], device)
        out = predict_probs(module, sample["img_data"], sample["seg_size"], device,
                            PredictOptions(amp=amp))
        max_diff = max(max_diff, (out - ref).abs().max().item())
        equal += int((out.argmax(0) == ref.argmax(0)).sum())
        total += ref[0].numel()
    return {"max_diff": max_diff, "equal": equal, "total": total}


def _val_samples(dataset) -> list[dict]:
    items = (dataset[i] for i in range(len(dataset)))
    return [{"img_data": item["img_data"], "seg_size": tuple(item["seg_label"].shape[1:])}
            for item in items]


# ----------------------------------------------------------------------------- demo model
def run_demo(args: argparse.Namespace) -> None:
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
    jobs = {label: eval_job(cfg) for label, cfg in configs.items()}
    samples = _val_samples(jobs[plain].dataset())
    reference = jobs[plain].model.load(cpu)
    plain_s = statistics.median(times[plain])
    rows, notes = [], []
    for label in VARIANTS:
        s = scores[label]
        d_miou = s["miou"] - scores[plain]["miou"]
        d_acc = s["pixel_acc"] - scores[plain]["pixel_acc"]
        same = agreement(reference, jobs[label].model.load(cpu), samples,
                         cpu, jobs[label].amp)
        seconds = statistics.median(times[label])
        rows.append([label, f"{s['miou']:.6f}", f"{d_miou:+.1e}", f"{100 * s['pixel_acc']:.4f}",
                     f"{100 * d_acc:+.1e}", f"{same['max_diff']:.1e}",
                     f"{100 * same['equal'] / same['total']:.4f}", f"{seconds * 1e3:.1f}",
                     f"**{seconds / plain_s:.2f}x**",
                     ", ".join(f"{t * 1e3:.1f}" for t in times[label])])
        if label != plain and "bf16" not in label:
            ok = abs(d_miou) <= MIOU_TOLERANCE
            notes.append(f"- {label}: |mIoU difference| {abs(d_miou):.1e} -> "
                         f"{'PASS' if ok else 'FAIL'} (tolerance {MIOU_TOLERANCE:g})")
    cfg0 = configs[plain]
    command = (f"python benchmarks/bench_precision.py --part demo --cfg {args.cfg} --dir "
               f"{args.dir} --data {args.data} --repeats {args.repeats} --threads {args.threads}")
    common.report("precision", "Inference options on a trained model "
                  "(`benchmarks/bench_precision.py`)", args, command, [
        f"`{cfg0.MODEL.arch_encoder}` + `{cfg0.MODEL.arch_decoder}` from `{args.dir}` "
        f"(checkpoint {cfg0.VAL.checkpoint}), {len(samples)} validation images of "
        f"`{args.data}`, scales {tuple(cfg0.DATASET.imgSizes)}, our evaluation loop (as "
        f"`eval.py`); max prob. diff and equal pixels against the plain run, over all pixels; "
        f"ms/image = median of {args.repeats} alternating runs in one process.",
        "",
        common.markdown_table(["variant", "mIoU", "vs plain", "pixel acc. (%)", "vs plain",
                               "max prob. diff", "equal pixels (%)", "ms/image",
                               "time vs plain", "runs (ms/image)"], rows),
        "",
        *notes,
    ])


# ----------------------------------------------------------------------------- architectures
def calibrate_batchnorm(module: torch.nn.Module, samples: list[dict], seed: int) -> None:
    """Random affine BatchNorm parameters, then running statistics measured on ``samples``.

    Statistics are cumulative means over train-mode passes (every scale of every image, as a
    batch of the image and its mirror image: the PPM's 1x1 pooled branch needs two values).
    """
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=gen) + 0.5)
            norm.bias.copy_(torch.rand(norm.bias.shape, generator=gen) * 0.6 - 0.3)
            norm.reset_running_stats()
            norm.momentum = None  # cumulative mean
        module.train()
        for sample in samples:
            for img in sample["img_data"]:
                module({"img_data": torch.cat([img, img.flip(-1)])}, segSize=img.shape[2:])
    module.eval()


def run_archs(args: argparse.Namespace) -> None:
    from mit_semseg.data import ValDataset
    from mit_semseg.data.synthetic import generate
    from mit_semseg.models import build_segmentation_model

    cpu = torch.device("cpu")
    scales = tuple(args.scales)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "data", num_train=1, num_val=args.images, seed=0,
                        min_size=args.min_size, max_size=args.max_size)
        opt = {"imgSizes": scales, "imgMaxSize": args.max_side, "padding_constant": 32,
               "num_class": NUM_CLASS}
        samples = _val_samples(ValDataset(str(root), str(Path(root) / "validation.odgt"), opt))
        sizes = ", ".join(f"{w}x{h}" for h, w in (s["seg_size"] for s in samples))
        for index, name in enumerate(args.archs):
            encoder, decoder = ARCHS[name]
            torch.manual_seed(index)
            net = build_segmentation_model(encoder, decoder, NUM_CLASS)
            calibrate_batchnorm(net, samples, seed=index)
            torch.save(net.encoder.state_dict(), Path(tmp) / f"encoder_{name}.pth")
            torch.save(net.decoder.state_dict(), Path(tmp) / f"decoder_{name}.pth")
            del net
            loaded = {fast: TrainedModel(encoder, decoder, NUM_CLASS, tmp, f"{name}.pth",
                             fast_inference=fast).load(cpu) for fast in (False, True)}
            same = agreement(loaded[False], loaded[True], samples, cpu)
            rows.append([f"{encoder} + {decoder}", f"{same['max_diff']:.1e}",
                         f"{100 * same['equal'] / same['total']:.4f}",
                         f"{same['total'] - same['equal']} / {same['total']}"])
            print(f"  {name}: max prob. diff {same['max_diff']:.2e}, "
                  f"{same['total'] - same['equal']} of {same['total']} pixels differ", flush=True)
    command = (f"python benchmarks/bench_precision.py --part archs --archs {' '.join(args.archs)}"
               f" --images {args.images} --min-size {args.min_size} --max-size {args.max_size}"
               f" --scales {' '.join(map(str, scales))} --max-side {args.max_side} --threads "
               f"{args.threads}")
    common.report("precision_archs", "`MODEL.fast_inference` against the plain path on the "
                  "released architectures (`benchmarks/bench_precision.py`)", args, command, [
        f"Random weights, 150 classes, BatchNorm with random affine parameters and running "
        f"statistics measured on the images (see the script's docstring); {len(samples)} "
        f"synthetic images ({sizes}) at scales {scales} (long side <= {args.max_side}, "
        "sides rounded up to multiples of 32), "
        "probabilities averaged over the scales at the image size by `predict_probs`, both "
        "paths loaded by `TrainedModel.load` from the same files. Max prob. diff = "
        "largest |difference| of any class probability at any pixel; equal pixels = same "
        "argmax.",
        "",
        common.markdown_table(["model", "max prob. diff", "equal pixels (%)",
                               "pixels differing"], rows),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("demo", "archs", "all"), default="all")
    parser.add_argument("--cfg", default=DEMO_CFG)
    parser.add_argument("--dir", default="ckpt/synthetic-mobilenetv2dilated-c1_deepsup",
                        help="folder with the trained encoder_/decoder_ files (DIR)")
    parser.add_argument("--data", default="data/synthetic",
                        help="dataset root holding validation.odgt")
    parser.add_argument("--checkpoint", default=None, help="VAL.checkpoint (default: config's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--archs", nargs="+", choices=list(ARCHS), default=list(ARCHS))
    parser.add_argument("--images", type=int, default=3, help="synthetic images (archs part)")
    parser.add_argument("--min-size", type=int, default=256)
    parser.add_argument("--max-size", type=int, default=384)
    parser.add_argument("--scales", type=int, nargs="+", default=[256, 320])
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("demo", "all"):
        run_demo(args)
    if args.part in ("archs", "all"):
        run_archs(args)


if __name__ == "__main__":
    main()
