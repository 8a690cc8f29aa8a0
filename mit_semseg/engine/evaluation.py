"""Validation loop, result aggregation and result files for ``eval.py`` / ``eval_multipro.py``.

:func:`evaluate` runs multi-scale (optionally flipped, optionally windowed) inference over a
validation loader and returns one integer confusion matrix. Shards evaluated in different
processes are combined by adding their matrices, which is exact, so the metrics do not depend on
how many processes were used. :func:`write_results` writes, atomically, into the output folder:

* ``eval_metrics.json``: mIoU, pixel accuracy, overall score, per-class IoU with names, timings;
* ``class_iou.csv``: one row per class (index, name, IoU, accuracy, pixels);
* ``confusion_matrix.npy`` (int64, rows = ground truth, columns = prediction) and
  ``confusion_matrix.png`` (row-normalised heat map).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mit_semseg.engine.inference import (
    TrainedModel,
    Window,
    load_segmentation_module,
    predict_probs,
)
from mit_semseg.files import atomic_write, atomic_write_text
from mit_semseg.metrics import confusion_matrix, scores_from_confusion
from mit_semseg.viz import confusion_matrix_figure, eval_panel, save_image

__all__ = [
    "EvalJob",
    "EvalResult",
    "compute_backend",
    "evaluate_shard",
    "report_results",
    "evaluate",
    "format_class_table",
    "format_summary",
    "iter_samples",
    "resolve_class_names",
    "shard_ranges",
    "write_results",
]

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """What :func:`evaluate` measured.

    Attributes:
        confusion: ``(C, C)`` int64 counts, rows = ground truth, columns = prediction.
        num_images: images evaluated.
        seconds: total inference time (forward passes incl. host-to-device copies).
    """

    confusion: np.ndarray
    num_images: int
    seconds: float

    def __add__(self, other: EvalResult) -> EvalResult:
        return EvalResult(
            self.confusion + other.confusion,
            self.num_images + other.num_images,
            self.seconds + other.seconds,
        )


def iter_samples(loader: Iterable[Any]) -> Iterator[dict[str, Any]]:
    """Yields validation samples one by one from a dataset or loader.

    Accepts items that are sample dicts or lists of them (the original's identity collate).
    """
    for item in loader:
        if isinstance(item, dict):
            yield item
        else:
            yield from item


def _squeeze_label(label: Any) -> np.ndarray:
    if hasattr(label, "detach"):
        label = label.detach().cpu().numpy()
    label = np.asarray(label)
    while label.ndim > 2 and label.shape[0] == 1:
        label = label[0]
    if label.ndim != 2:
        raise ValueError(f"seg_label must be (H, W) or (1, H, W), got shape {label.shape}")
    return label


def _result_name(info: Any, index: int) -> str:
    """Output file name for the visualisation of a sample: its image's stem + .png."""
    info = info[0] if isinstance(info, (list, tuple)) else info
    return f"{Path(str(info)).stem}.png" if info else f"image_{index:06d}.png"


def evaluate(
    segmentation_module: nn.Module,
    loader: Iterable[Any],
    num_class: int,
    device: torch.device,
    flip: bool = False,
    window: Window | None = None,
    amp: str = "",
    progress: bool = False,
    visualize_dir: str | Path | None = None,
    palette: np.ndarray | None = None,
    on_image: Callable[[], None] | None = None,
    class_names: Sequence[str] | None = None,
) -> EvalResult:
    """Runs inference over a validation set and accumulates the confusion matrix.

    Args:
        segmentation_module: inference module on ``device`` (see :func:`predict_probs`).
        loader: yields ValDataset samples (``img_data`` list of ``(1, 3, h, w)`` per scale,
            ``seg_label`` ``(1, H, W)`` with -1 = ignore, ``img_ori``, ``info``), or lists of them.
        num_class: number of classes.
        device: where to run.
        flip: average with horizontally flipped inputs.
        window: sliding-window size or ``(size, stride)``; ``None`` = whole images.
        amp: reduced-precision inference (see :func:`predict_probs`); ``""`` = fp32.
        progress: show a tqdm progress bar.
        visualize_dir: if given, write ``image | ground truth | prediction | legend`` PNGs
            there (see :func:`mit_semseg.viz.eval_panel`).
        palette: ``(N, 3)`` colours, required with ``visualize_dir``.
        on_image: called after each image (progress reporting from worker processes).
        class_names: names in the pictures' legends; ``None`` = ``class_<i>``.

    Returns:
        the accumulated :class:`EvalResult`.
    """
    if visualize_dir is not None and palette is None:
        raise ValueError("visualize_dir needs a palette")
    segmentation_module.eval()
    conf = np.zeros((num_class, num_class), np.int64)
    seconds = 0.0
    count = 0
    samples = iter_samples(loader)
    if progress:
        from tqdm import tqdm

        total = len(loader) if hasattr(loader, "__len__") else None
        samples = tqdm(samples, total=total, desc="eval", unit="img", dynamic_ncols=True)
    for sample in samples:
        label = _squeeze_label(sample["seg_label"])
        _sync(device)
        start = time.perf_counter()
        probs = predict_probs(
            segmentation_module, sample["img_data"], label.shape, device, flip=flip,
            window=window, amp=amp,
        )
        pred = probs.argmax(0).cpu().numpy()  # .cpu() waits for the device
        seconds += time.perf_counter() - start
        conf += confusion_matrix(pred, label, num_class)
        if visualize_dir is not None:
            image = np.asarray(sample["img_ori"])
            image = image[0] if image.ndim == 4 else image
            name = _result_name(sample.get("info"), count)
            panel = eval_panel(image, label, pred, palette, class_names)
            save_image(Path(visualize_dir) / name, panel)
        count += 1
        if on_image is not None:
            on_image()
    return EvalResult(conf, count, seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def shard_ranges(num_items: int, num_shards: int) -> list[tuple[int, int]]:
    """Splits ``[0, num_items)`` into at most ``num_shards`` contiguous non-empty ranges.

    Sizes differ by at most one; with more shards than items, only ``num_items`` ranges are
    returned (so no worker ever gets an empty list).
    """
    if num_shards < 1:
        raise ValueError(f"need at least one shard, got {num_shards}")
    num_shards = min(num_shards, num_items)
    bounds = [num_items * k // num_shards for k in range(num_shards + 1)] if num_shards else [0]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def resolve_class_names(num_class: int, root_dataset: str | Path | None = None) -> list[str]:
    """Display names of the classes, by the first rule that applies.

    1. ``<root_dataset>/object_info.csv`` (the synthetic dataset and custom datasets);
    2. the packaged ADE20K table when ``num_class == 150``;
    3. ``class_<i>``.

    A table with fewer rows than ``num_class`` is completed with ``class_<i>`` names.
    """
    from mit_semseg.data.palette import OBJECT150_CSV, class_names

    candidates = []
    if root_dataset:
        candidates.append(Path(root_dataset) / "object_info.csv")
    if num_class == 150:
        candidates.append(OBJECT150_CSV)
    names: list[str] = []
    for path in candidates:
        if path.is_file():
            names = [str(n) for n in class_names(path)]
            logger.info("class names from %s", path)
            break
    names = names[:num_class]
    return names + [f"class_{i}" for i in range(len(names), num_class)]


def format_class_table(scores: dict[str, Any], class_names: Sequence[str]) -> str:
    """Per-class IoU lines in the original's ``class [i], IoU: x`` format, with names."""
    width = max((len(n) for n in class_names), default=0)
    lines = []
    for i, (name, iou, acc) in enumerate(zip(class_names, scores["iou"], scores["class_acc"])):
        mark = "" if scores["present"][i] else "  (absent)"
        lines.append(f"class [{i}], IoU: {iou:.4f}  acc: {acc:.4f}  {name:<{width}}{mark}")
    return "\n".join(lines)


def format_summary(scores: dict[str, Any], seconds_per_image: float | None = None) -> str:
    """The summary line: ``Mean IoU: ..., Accuracy: ...%, Overall: ...[, Inference Time: ...s]``."""
    text = (
        f"Mean IoU: {scores['miou']:.4f}, Accuracy: {100 * scores['pixel_acc']:.2f}%, "
        f"Overall: {scores['overall']:.4f}"
    )
    if seconds_per_image is not None:
        text += f", Inference Time: {seconds_per_image:.4f}s"
    return text


def write_results(
    out_dir: str | Path,
    result: EvalResult,
    class_names: Sequence[str],
    extra: dict[str, Any] | None = None,
    heat_map: bool = True,
) -> dict[str, Path]:
    """Writes metrics, per-class table and confusion matrix files (each atomically).

    Args:
        out_dir: destination folder (created).
        result: what :func:`evaluate` (or a sum of them) returned.
        class_names: one name per class.
        extra: more JSON-serialisable fields for ``eval_metrics.json`` (config, checkpoint...).
        heat_map: also draw ``confusion_matrix.png``.

    Returns:
        name -> path of the files written.
    """
    out_dir = Path(out_dir)
    scores = scores_from_confusion(result.confusion)
    per_class = [
        {
            "index": i,
            "name": name,
            "iou": float(scores["iou"][i]),
            "accuracy": float(scores["class_acc"][i]),
            "gt_pixels": int(result.confusion[i].sum()),
            "pred_pixels": int(result.confusion[:, i].sum()),
            "present": bool(scores["present"][i]),
        }
        for i, name in enumerate(class_names)
    ]
    metrics = {
        "mean_iou": scores["miou"],
        "pixel_accuracy": scores["pixel_acc"],
        "overall": scores["overall"],
        # null when no class occurs at all (empty validation set)
        "mean_iou_present_classes": (
            None if np.isnan(scores["miou_present"]) else scores["miou_present"]
        ),
        "num_images": result.num_images,
        "num_pixels": scores["num_pixels"],
        "num_class": len(class_names),
        "inference_seconds_per_image": result.seconds / max(result.num_images, 1),
        "per_class": per_class,
        **(extra or {}),
    }
    text = json.dumps(metrics, indent=2, allow_nan=False)
    paths = {
        "metrics": out_dir / "eval_metrics.json",
        "class_iou": out_dir / "class_iou.csv",
        "confusion": out_dir / "confusion_matrix.npy",
    }
    atomic_write_text(paths["metrics"], text)

    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(per_class[0]) if per_class else ["index"])
    writer.writeheader()
    writer.writerows(per_class)
    atomic_write_text(paths["class_iou"], table.getvalue())
    atomic_write(
        paths["confusion"],
        lambda f: np.save(f, result.confusion.astype(np.int64), allow_pickle=False),
    )
    if heat_map:
        paths["confusion_png"] = confusion_matrix_figure(
            result.confusion, out_dir / "confusion_matrix.png", class_names
        )
    return paths


def _keep_list(batch: list[Any]) -> list[Any]:
    """DataLoader collate that keeps samples as they are (images differ in size)."""
    return batch


@dataclass(frozen=True)
class EvalJob:
    """What ``eval.py`` / ``eval_multipro.py`` evaluate, and how (translated from the config).

    Attributes:
        model: the trained model.
        out_dir: folder of the result files (``DIR``; for a training run, the folder of the
            weights; for a released model, not its cache folder).
        root_dataset: folder the paths of ``list_val`` are relative to (``DATASET.root_dataset``).
        list_val: the validation ``.odgt`` list (``DATASET.list_val``).
        scales: short sides of the test scales (``DATASET.imgSizes``).
        max_size: cap on the long side (``DATASET.imgMaxSize``).
        padding_constant: scaled sides are multiples of this (``DATASET.padding_constant``).
        flip: also average the flipped images (``VAL.flip``).
        amp: reduced-precision inference (``VAL.amp``), see :func:`predict_probs`.
        workers: loader worker processes (``VAL.workers``).
        visualize: write ``[image | ground truth | prediction]`` PNGs to
            ``out_dir/result/`` (``VAL.visualize``).
    """

    model: TrainedModel
    out_dir: Path
    root_dataset: str
    list_val: str
    scales: tuple[int, ...]
    max_size: int
    padding_constant: int
    flip: bool = False
    amp: str = ""
    workers: int = 0
    visualize: bool = False

    def dataset(self, start: int = -1, end: int = -1) -> Any:
        """The :class:`~mit_semseg.data.ValDataset` of records ``[start, end)`` (all: -1, -1)."""
        from mit_semseg.data import ValDataset

        options = {"imgSizes": self.scales, "imgMaxSize": self.max_size,
                   "padding_constant": self.padding_constant, "num_class": self.model.num_class}
        return ValDataset(self.root_dataset, self.list_val, options, start_idx=start,
                          end_idx=end)


def evaluate_shard(
    job: EvalJob,
    device: torch.device,
    start: int = -1,
    end: int = -1,
    progress: bool = False,
    on_image: Callable[[], None] | None = None,
) -> EvalResult:
    """Evaluates records ``[start, end)`` of ``job.list_val`` (all with ``-1, -1``).

    Args:
        job: the model, data and options.
        device: where to run.
        start: first record (inclusive), -1 = from the beginning.
        end: last record (exclusive), -1 = to the end.
        progress: show a progress bar.
        on_image: called after each image.
    """
    from torch.utils.data import DataLoader

    from mit_semseg.data.palette import dataset_palette

    num_class = job.model.num_class
    module = load_segmentation_module(job.model, device)
    loader = DataLoader(
        job.dataset(start, end),
        batch_size=1,
        shuffle=False,
        collate_fn=_keep_list,
        num_workers=job.workers,
        pin_memory=device.type == "cuda",
    )
    visualize_dir = job.out_dir / "result" if job.visualize else None
    return evaluate(
        module,
        loader,
        num_class,
        device,
        flip=job.flip,
        amp=job.amp,
        progress=progress,
        visualize_dir=visualize_dir,
        palette=dataset_palette(num_class, job.root_dataset) if visualize_dir else None,
        on_image=on_image,
        class_names=(resolve_class_names(num_class, job.root_dataset)
                     if visualize_dir is not None else None),
    )


def compute_backend(device: torch.device, backend: str = "torch") -> str:
    """The library and hardware that ran the forward passes, e.g. ``torch 2.6.0, CPU
    (oneDNN, AVX512)`` or ``torch 2.6.0, CUDA 12.4, cuDNN 90100, NVIDIA H100``; with
    ``backend="onnxruntime"`` (:attr:`TrainedModel.backend`) e.g. ``onnxruntime 1.20.1
    (CPUExecutionProvider); full-size tail: torch 2.6.0, CPU (oneDNN, AVX512)``."""
    if device.type == "cuda":
        torch_part = (f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
                      f"{torch.backends.cudnn.version()}, {torch.cuda.get_device_name(device)}")
    else:
        library = "oneDNN" if torch.backends.mkldnn.is_available() else "no oneDNN"
        torch_part = (f"torch {torch.__version__}, {device.type.upper()} ({library}, "
                      f"{torch.backends.cpu.get_cpu_capability()})")
    if backend == "torch":
        return torch_part
    import onnxruntime

    return (f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider); full-size tail: "
            f"{torch_part}")


def report_results(
    job: EvalJob, result: EvalResult, devices: Sequence[torch.device],
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """Writes the result files into ``job.out_dir`` and builds the printed report.

    ``eval_metrics.json`` also records how the numbers were computed: ``fast_inference``
    (BatchNorm folded; ``false`` is the original's arithmetic), ``precision`` (``fp32`` or the
    ``VAL.amp`` autocast type), ``backend`` (see :func:`compute_backend`) and ``devices``.

    Returns:
        ``(scores, text)``: :func:`~mit_semseg.metrics.scores_from_confusion` output and the
        per-class table followed by the ``[Eval Summary]`` lines.
    """
    names = resolve_class_names(job.model.num_class, job.root_dataset)
    scores = scores_from_confusion(result.confusion)
    info = {
        "checkpoint": str(Path(job.model.weights_dir)
                          / f"{{encoder,decoder}}_{job.model.checkpoint}"),
        "list_val": job.list_val,
        "scales": list(job.scales),
        "flip": bool(job.flip),
        "fast_inference": bool(job.model.fast_inference),
        "precision": job.amp or "fp32",
        "backend": compute_backend(devices[0], job.model.backend),
        "devices": [str(d) for d in devices],
        **(extra or {}),
    }
    paths = write_results(job.out_dir, result, names, extra=info)
    per_image = result.seconds / max(result.num_images, 1)
    lines = [
        format_class_table(scores, names),
        "[Eval Summary]:",
        format_summary(scores, per_image),
        f"Mean IoU over the {int(scores['present'].sum())} classes present: "
        f"{scores['miou_present']:.4f}",
        "Results written to " + ", ".join(str(p) for p in paths.values()),
    ]
    return scores, "\n".join(lines)
