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
import importlib.util
import os
import statistics
import sys
import tempfile
from pathlib import Path

import common

sys.path.insert(0, str(common.REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mit_semseg.cli import model_setup  # noqa: E402
from mit_semseg.cli.eval import eval_job  # noqa: E402
from mit_semseg.config import load_config  # noqa: E402
from mit_semseg.deploy.int8 import int8_unavailable  # noqa: E402
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
    "int8 (MODEL.precision int8)": ["MODEL.precision", "int8"],
}
INT8 = "int8 (MODEL.precision int8)"
MIOU_TOLERANCE = 1e-4
INT8_MIOU_TOLERANCE = 0.005  # issue 25: int8 within 0.5 mIoU point of fp32 on the demo model
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
            "DATASET.list_val", str(data / "validation.odgt"),
            "DATASET.list_train", str(data / "training.odgt"), "VAL.workers", "0",
            "VAL.visualize", "False", "DEVICE", "cpu"]
    if args.checkpoint:
        base += ["VAL.checkpoint", args.checkpoint]
    cfg_path = root / args.cfg if not Path(args.cfg).is_absolute() else Path(args.cfg)
    unavailable = int8_unavailable()
    variants = [label for label in VARIANTS if label != INT8 or not unavailable]
    configs = {label: load_config(cfg_path, base + VARIANTS[label]) for label in variants}
    for path in (data / "validation.odgt",
                 ckpt / f"encoder_{next(iter(configs.values())).VAL.checkpoint}"):
        if not path.is_file():
            sys.exit(f"{path} not found: run `bash scripts/demo.sh` first, or pass --cfg, "
                     "--dir and --data of a trained model")
    cpu = torch.device("cpu")
    # as eval.py builds them (int8: calibrated on the training list, or its cached calibration)
    jobs = {label: eval_job(cfg, model_setup.inference_model(cfg, None, "VAL.checkpoint", "DIR",
                                                              None, progress=False))
            for label, cfg in configs.items()}
    scores, times = {}, {label: [] for label in variants}
    for repeat in range(args.repeats):
        labels = variants if repeat % 2 == 0 else variants[::-1]
        for label in labels:
            if label == INT8 and repeat > 0:
                continue  # its time is the compilation's (see below): one run gives the scores
            result = evaluate_shard(jobs[label], cpu)
            times[label].append(result.seconds / result.num_images)
            scores.setdefault(label, scores_from_confusion(result.confusion))
            print(f"  repeat {repeat + 1}/{args.repeats} {label}: "
                  f"{times[label][-1] * 1e3:.1f} ms/image, mIoU {scores[label]['miou']:.6f}",
                  flush=True)
    plain = variants[0]
    samples = _val_samples(jobs[plain].dataset())
    reference = jobs[plain].model.load(cpu)
    plain_s = statistics.median(times[plain])
    rows = []
    notes = [f"- int8 not measured: {unavailable}"] if unavailable else []
    for label in variants:
        s = scores[label]
        d_miou = s["miou"] - scores[plain]["miou"]
        d_acc = s["pixel_acc"] - scores[plain]["pixel_acc"]
        same = agreement(reference, jobs[label].model.load(cpu), samples,
                         cpu, jobs[label].options.amp)
        seconds = statistics.median(times[label])
        timing = [f"{seconds * 1e3:.1f}", f"**{seconds / plain_s:.2f}x**",
                  ", ".join(f"{t * 1e3:.1f}" for t in times[label])]
        if label == INT8:
            timing = ["(compiles)", "-", f"{seconds * 1e3:.1f} incl. compilation"]
        rows.append([label, f"{s['miou']:.6f}", f"{d_miou:+.1e}", f"{100 * s['pixel_acc']:.4f}",
                     f"{100 * d_acc:+.1e}", f"{same['max_diff']:.1e}",
                     f"{100 * same['equal'] / same['total']:.4f}", *timing])
        tolerance = INT8_MIOU_TOLERANCE if label == INT8 else MIOU_TOLERANCE
        if label != plain and "bf16" not in label:
            ok = abs(d_miou) <= tolerance
            notes.append(f"- {label}: |mIoU difference| {abs(d_miou):.1e} -> "
                         f"{'PASS' if ok else 'FAIL'} (tolerance {tolerance:g})")
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


# ----------------------------------------------------------------------------- int8, photos
# scikit-image's bundled photographs (no download): fine-tuning and calibration images, and
# held-out ones on which int8 is compared with float32
PHOTOS_TRAIN = ("astronaut", "coffee", "rocket", "motorcycle_left", "camera", "coins", "brick",
                "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "page")
PHOTOS_HELD_OUT = ("chelsea", "motorcycle_right", "moon", "retina")
PHOTO_CLASSES = 8
PHOTO_TRAIN_SIZES = (160, 192, 224, 256)
# name -> (config, start from the demo checkpoint (else random init), learning rate)
PHOTO_MODELS = {
    "demo": (DEMO_CFG, True, 0.005),
    "r18d_ppmds": ("config/ade20k-resnet18dilated-ppm_deepsup.yaml", False, 0.02),
}


def _photo(name: str) -> np.ndarray:
    """A bundled scikit-image photograph as ``(H, W, 3)`` uint8 RGB, long side <= 640."""
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        image = left if name.endswith("left") else right
    else:
        image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    scale = min(1.0, 640 / max(image.shape[:2]))
    if scale < 1:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image[:, :, :3])


def make_photo_dataset(folder: Path) -> Path:
    """Writes the photographs with labels: ``training.odgt`` and ``held_out.odgt``.

    There are no annotations, so the labels are ``PHOTO_CLASSES`` colour classes: k-means of
    the training photos' (smoothed) Lab colours, each pixel labelled by its nearest centre.
    A learnable task on real images; what matters here is that the weights that int8 is
    measured on were trained on real photographs.
    """
    from mit_semseg.data.odgt import write_odgt

    photos = {name: _photo(name) for name in PHOTOS_TRAIN + PHOTOS_HELD_OUT}
    lab = {name: cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2LAB), (5, 5), 0)
           for name, image in photos.items()}
    rng = np.random.default_rng(0)
    pixels = np.concatenate([lab[n].reshape(-1, 3)[rng.choice(lab[n].shape[0] * lab[n].shape[1],
                                                               5000)]
                             for n in PHOTOS_TRAIN]).astype(np.float32)
    cv2.setRNGSeed(0)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 0.1)
    _, _, centres = cv2.kmeans(pixels, PHOTO_CLASSES, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    centres = centres[np.argsort(centres[:, 0])]  # darkest first: a stable class order
    for split, names in (("training", PHOTOS_TRAIN), ("held_out", PHOTOS_HELD_OUT)):
        records = []
        for name in names:
            colours = lab[name].reshape(-1, 1, 3).astype(np.float32)
            label = np.argmin(((colours - centres[None]) ** 2).sum(-1), axis=1) + 1
            label = label.reshape(lab[name].shape[:2]).astype(np.uint8)
            image_path, label_path = f"images/{name}.jpg", f"labels/{name}.png"
            for path in (image_path, label_path):
                (folder / path).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / image_path), cv2.cvtColor(photos[name], cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(folder / label_path), label)
            records.append({"fpath_img": image_path, "fpath_segm": label_path,
                            "width": int(label.shape[1]), "height": int(label.shape[0])})
        write_odgt(folder / f"{split}.odgt", records)
    return folder


def train_on_photos(name: str, data: Path, out: Path, args: argparse.Namespace) -> Path:
    """Trains (fine-tunes) photo model ``name`` with ``train.py``; returns its folder (kept
    and reused when it already holds the weights)."""
    import subprocess

    cfg, from_demo, lr = PHOTO_MODELS[name]
    if (out / "encoder_epoch_1.pth").is_file():
        print(f"  {name}: reusing the weights in {out}", flush=True)
        return out
    opts = ["DIR", str(out), "DEVICE", "cpu", "DATASET.root_dataset", str(data),
            "DATASET.list_train", str(data / "training.odgt"),
            "DATASET.list_val", str(data / "held_out.odgt"),
            "DATASET.num_class", str(PHOTO_CLASSES),
            "DATASET.imgSizes", str(PHOTO_TRAIN_SIZES), "DATASET.imgMaxSize", "384",
            "DATASET.padding_constant", "8", "DATASET.segm_downsampling_rate", "8",
            "TRAIN.num_epoch", "1", "TRAIN.epoch_iters", str(args.photo_steps),
            "TRAIN.batch_size_per_gpu", "4", "TRAIN.workers", "0", "TRAIN.disp_iter", "20",
            "TRAIN.checkpoint_minutes", "0", "TRAIN.pretrained", "False",
            "TRAIN.lr_encoder", str(lr), "TRAIN.lr_decoder", str(lr)]
    if from_demo:
        demo = _absolute(args.dir)
        checkpoint = args.checkpoint or load_config(_absolute(DEMO_CFG)).VAL.checkpoint
        opts += ["MODEL.weights_encoder", str(demo / f"encoder_{checkpoint}"),
                 "MODEL.weights_decoder", str(demo / f"decoder_{checkpoint}")]
    print(f"  {name}: training {args.photo_steps} steps on {len(PHOTOS_TRAIN)} photos "
          f"({'from the demo model' if from_demo else 'from random initialisation'})",
          flush=True)
    # one thread, as scripts/demo.sh trains: two-thread OpenMP steps slow down several-fold
    # as soon as anything else runs on a 2-core machine
    env = {**os.environ, "PYTHONPATH": str(common.REPO_ROOT), "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(common.REPO_ROOT / "train.py"), "--cfg",
                           str(_absolute(cfg)), "--gpus", "cpu", *opts],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"training {name} on the photos failed:\n{proc.stdout[-2000:]}"
                 f"{proc.stderr[-3000:]}")
    return out


def _absolute(path: str | Path) -> Path:
    return Path(path) if Path(path).is_absolute() else common.REPO_ROOT / path


def int8_agreement(fp32, quantized, samples: list[dict], device) -> dict:
    """int8 against float32 (default fast path) per pixel, and both against the labels."""
    differences, equal, total, correct = [], 0, 0, {"fp32": 0, "int8": 0}
    for sample in samples:
        reference = predict_probs(fp32, sample["img_data"], sample["seg_size"], device)
        got = predict_probs(quantized, sample["img_data"], sample["seg_size"], device)
        differences.append((got - reference).abs().amax(0).flatten())
        labels = {"fp32": reference.argmax(0), "int8": got.argmax(0)}
        equal += int((labels["int8"] == labels["fp32"]).sum())
        total += labels["fp32"].numel()
        for key, predicted in labels.items():
            correct[key] += int((predicted == sample["label"]).sum())
    difference = torch.cat(differences)
    return {"equal": equal / total, "max": difference.max().item(),
            "mean": difference.mean().item(),
            "p99": torch.quantile(difference[::max(1, difference.numel() // 1_000_000)],
                                  0.99).item(),
            "acc_fp32": correct["fp32"] / total, "acc_int8": correct["int8"] / total,
            "pixels": total}


def run_photos(args: argparse.Namespace) -> None:
    from mit_semseg.data import ValDataset
    from mit_semseg.deploy.int8 import CalibrationSet, int8_model

    missing = int8_unavailable()
    if importlib.util.find_spec("skimage") is None:
        missing = ("the photos part needs scikit-image's bundled photographs: pip install "
                   "scikit-image")
    if missing:  # a failure when asked for by name; --part all goes on without it
        if args.part == "photos":
            sys.exit(f"bench_precision --part photos: {missing}")
        print(f"photos part skipped: {missing}")
        return
    cpu = torch.device("cpu")
    scales = tuple(args.photo_scales)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.photo_dir) if args.photo_dir else Path(tmp)
        data = make_photo_dataset(work / "photos")
        opt = {"imgSizes": scales, "imgMaxSize": 640, "padding_constant": 8,
               "num_class": PHOTO_CLASSES}
        held_out = ValDataset(str(data), str(data / "held_out.odgt"), opt)
        samples = [{**sample, "label": held_out[i]["seg_label"][0]}
                   for i, sample in enumerate(_val_samples(held_out))]
        calibration = CalibrationSet(data / "training.odgt", data, images=len(PHOTOS_TRAIN),
                                     scales=scales, max_size=640)
        rows = []
        for name in args.photo_models:
            ckpt = train_on_photos(name, data, work / f"ckpt_{name}", args)
            cfg = load_config(_absolute(PHOTO_MODELS[name][0]))
            model = TrainedModel(cfg.MODEL.arch_encoder, cfg.MODEL.arch_decoder, PHOTO_CLASSES,
                                 ckpt, "epoch_1.pth")
            quantized = int8_model(model, calibration, cache_dir=work / "int8_cache")
            same = int8_agreement(model.load(cpu), quantized.load(cpu), samples, cpu)
            rows.append([f"{model.arch_encoder} + {model.arch_decoder} ({name})",
                         f"{100 * same['equal']:.2f}", f"{same['mean']:.4f}",
                         f"{same['p99']:.3f}", f"{same['max']:.3f}",
                         f"{100 * same['acc_fp32']:.2f} / {100 * same['acc_int8']:.2f}"])
            print(f"  {name}: {rows[-1]}", flush=True)
    sizes = ", ".join(f"{s['seg_size'][1]}x{s['seg_size'][0]}" for s in samples)
    command = (f"python benchmarks/bench_precision.py --part photos --photo-models "
               f"{' '.join(args.photo_models)} --photo-steps {args.photo_steps} --photo-scales "
               f"{' '.join(map(str, scales))} --dir {args.dir} --threads {args.threads}")
    common.report("int8_agreement", "int8 against float32 on real photographs "
                  "(`benchmarks/bench_precision.py --part photos`)", args, command, [
        f"Models trained on {len(PHOTOS_TRAIN)} of scikit-image's bundled photographs "
        f"({', '.join(PHOTOS_TRAIN)}) for {args.photo_steps} steps (batch 4, short sides "
        f"{PHOTO_TRAIN_SIZES}): `demo` = the synthetic demo model fine-tuned, `r18d_ppmds` = "
        f"trained from random initialisation; labels = {PHOTO_CLASSES} colour classes "
        "(k-means of the Lab colours; there are no annotations). int8 (`MODEL.precision "
        f"int8`, calibrated on the {len(PHOTOS_TRAIN)} training photos at the test scales) "
        f"against the default float32 path on the held-out photos ({', '.join(PHOTOS_HELD_OUT)}"
        f"; {sizes} px) at scales {scales} (long side <= 640), probabilities averaged over "
        "the scales at the image size as `eval.py` does. Prob. diff = per pixel, the largest "
        "|difference| of a class probability; mean, 99th percentile and maximum over "
        f"{sum(h * w for h, w in (s['seg_size'] for s in samples))} pixels.",
        "",
        common.markdown_table(["model", "equal pixels (%)", "mean prob. diff",
                               "p99 prob. diff", "max prob. diff",
                               "pixel acc. vs colour labels, fp32 / int8 (%)"], rows),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("demo", "archs", "photos", "all"), default="all")
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
    parser.add_argument("--photo-models", nargs="+", choices=list(PHOTO_MODELS),
                        default=list(PHOTO_MODELS), help="photos part: models to train")
    parser.add_argument("--photo-steps", type=int, default=300,
                        help="photos part: training steps per model")
    parser.add_argument("--photo-scales", type=int, nargs="+", default=[300, 375, 450])
    parser.add_argument("--photo-dir", default=None,
                        help="photos part: keep the photos, weights and calibrations here "
                             "(reused by a later run) instead of a temporary folder")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--section", default=None,
                        help="write this section of RESULTS.md instead of the part's own (e.g. "
                             "a run with ONEDNN_MAX_CPU_ISA set beside the normal one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("demo", "all"):
        run_demo(args)
    if args.part in ("archs", "all"):
        run_archs(args)
    if args.part in ("photos", "all"):
        run_photos(args)


if __name__ == "__main__":
    main()
