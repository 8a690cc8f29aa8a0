"""Validation loop, result aggregation and result files for ``eval.py`` / ``eval_multipro.py``.

:func:`evaluate` runs multi-scale (optionally flipped, optionally windowed) inference over a
validation loader and returns one integer confusion matrix; what else happens per image
(pictures, a progress bar, progress messages from worker processes) are hooks it calls with the
sample, its label and the prediction (:class:`SavePanels`, :class:`ProgressBar`). Shards
evaluated in different processes are combined by adding their matrices, which is exact, so the
metrics do not depend on how many processes were used. :func:`write_results` writes, atomically,
into the output folder:

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
from torch.utils.data import DataLoader
from tqdm import tqdm

from mit_semseg.data.datasets import ValDataset
from mit_semseg.data.image_io import MAX_IMAGE_PIXELS
from mit_semseg.data.loader import user_scattered_collate
from mit_semseg.data.palette import ClassTable, dataset_classes
from mit_semseg.files import atomic_write, atomic_write_text
from mit_semseg.inference.predict import PredictOptions, predict_probs
from mit_semseg.inference.trained_model import TrainedModel
from mit_semseg.metrics import confusion_matrix, scores_from_confusion
from mit_semseg.viz import confusion_matrix_figure, eval_panel, save_image

__all__ = [
    "EvalJob",
    "EvalResult",
    "ImageHook",
    "ProgressBar",
    "SavePanels",
    "compute_backend",
    "evaluate_shard",
    "report_results",
    "evaluate",
    "format_class_table",
    "format_summary",
    "iter_samples",
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


# called after each image with (sample, ground truth (H, W), prediction (H, W))
ImageHook = Callable[[dict, np.ndarray, np.ndarray], None]


class SavePanels:
    """Hook writing ``image | ground truth | prediction | legend`` PNGs into ``folder`` (see
    :func:`mit_semseg.viz.eval_panel`), one per image, named after the image file.

    Args:
        folder: where the pictures go (created).
        palette: ``(N, 3)`` uint8 RGB class colours.
        class_names: names in the legends; ``None`` = ``class_<i>``.
    """

    def __init__(self, folder: str | Path, palette: np.ndarray,
                 class_names: Sequence[str] | None = None) -> None:
        self.folder = Path(folder)
        self.palette = palette
        self.class_names = class_names
        self.count = 0

    def __call__(self, sample: dict, label: np.ndarray, pred: np.ndarray) -> None:
        image = np.asarray(sample["img_ori"])
        image = image[0] if image.ndim == 4 else image
        info = sample.get("info")
        info = info[0] if isinstance(info, (list, tuple)) else info
        name = f"{Path(str(info)).stem}.png" if info else f"image_{self.count:06d}.png"
        save_image(self.folder / name, eval_panel(image, label, pred, self.palette,
                                                  self.class_names))
        self.count += 1


class ProgressBar:
    """Hook advancing a tqdm bar of ``total`` images; :meth:`close` it when done."""

    def __init__(self, total: int | None, desc: str = "eval") -> None:
        self.bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)

    def __call__(self, sample: dict, label: np.ndarray, pred: np.ndarray) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def evaluate(
    segmentation_module: Any,
    loader: Iterable[Any],
    num_class: int,
    device: torch.device,
    options: PredictOptions = PredictOptions(),
    hooks: Sequence[ImageHook] = (),
) -> EvalResult:
    """Runs inference over a validation set and accumulates the confusion matrix.

    Args:
        segmentation_module: inference module on ``device`` (see :func:`predict_probs`).
        loader: yields ValDataset samples (``img_data`` list of ``(1, 3, h, w)`` per scale,
            ``seg_label`` ``(1, H, W)`` with -1 = ignore, ``img_ori``, ``info``), or lists of them.
        num_class: number of classes.
        device: where to run.
        options: flips, windows and precision of the prediction.
        hooks: called after each image with the sample, its label and the prediction
            (:class:`SavePanels`, :class:`ProgressBar`, progress messages...).

    Returns:
        the accumulated :class:`EvalResult`.
    """
    segmentation_module.eval()
    conf = np.zeros((num_class, num_class), np.int64)
    seconds = 0.0
    count = 0
    for sample in iter_samples(loader):
        label = _squeeze_label(sample["seg_label"])
        _sync(device)
        start = time.perf_counter()
        probs = predict_probs(segmentation_module, sample["img_data"], label.shape, device,
                              options)
        pred = probs.argmax(0).cpu().numpy()  # .cpu() waits for the device
        seconds += time.perf_counter() - start
        conf += confusion_matrix(pred, label, num_class)
        count += 1
        for hook in hooks:
            hook(sample, label, pred)
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


@dataclass(frozen=True)
class EvalJob:
    """What ``eval.py`` / ``eval_multipro.py`` evaluate, and how (translated from the config).

    Attributes:
        model: the trained model (a :class:`TrainedModel` or a subclass for another backend).
        out_dir: folder of the result files (``DIR``; for a training run, the folder of the
            weights; for a released model, not its cache folder).
        root_dataset: folder the paths of ``list_val`` are relative to (``DATASET.root_dataset``).
        list_val: the validation ``.odgt`` list (``DATASET.list_val``).
        scales: short sides of the test scales (``DATASET.imgSizes``).
        max_size: cap on the long side (``DATASET.imgMaxSize``).
        padding_constant: scaled sides are multiples of this (``DATASET.padding_constant``).
        options: flips (``VAL.flip``) and precision (``VAL.amp``) of the prediction.
        workers: loader worker processes (``VAL.workers``).
        visualize: write ``[image | ground truth | prediction]`` PNGs to
            ``out_dir/result/`` (``VAL.visualize``).
        max_pixels: images and labels of more pixels are refused before decoding
            (``DATASET.max_image_pixels``).

    Class names and colours (reports, pictures) come from the table of the model's folder,
    else of the dataset (see :meth:`classes`).
    """

    model: TrainedModel
    out_dir: Path
    root_dataset: str
    list_val: str
    scales: tuple[int, ...]
    max_size: int
    padding_constant: int
    options: PredictOptions = PredictOptions()
    workers: int = 0
    visualize: bool = False
    max_pixels: int = MAX_IMAGE_PIXELS

    def classes(self) -> ClassTable:
        """The classes' names and colours: the model's run folder's table (``DIR/
        object_info.csv``, written by ``train.py``), else the dataset's, else ADE20K's (see
        :func:`mit_semseg.data.palette.dataset_classes`)."""
        return dataset_classes(self.model.num_class, self.root_dataset, self.model.weights_dir)

    def dataset(self, start: int = -1, end: int = -1) -> ValDataset:
        """The :class:`~mit_semseg.data.ValDataset` of records ``[start, end)`` (all: -1, -1)."""
        options = {"imgSizes": self.scales, "imgMaxSize": self.max_size,
                   "padding_constant": self.padding_constant, "num_class": self.model.num_class,
                   "max_image_pixels": self.max_pixels}
        return ValDataset(self.root_dataset, self.list_val, options, start_idx=start,
                          end_idx=end)


def evaluate_shard(
    job: EvalJob,
    device: torch.device,
    shard: tuple[int, int] = (-1, -1),
    progress: bool = False,
    hooks: Sequence[ImageHook] = (),
) -> EvalResult:
    """Evaluates records ``[start, end)`` of ``job.list_val`` (all with ``(-1, -1)``).

    Args:
        job: the model, data and options.
        device: where to run.
        shard: ``(start, end)``: first record (inclusive, -1 = from the beginning) and last
            (exclusive, -1 = to the end).
        progress: show a progress bar.
        hooks: called after each image (see :func:`evaluate`), after the pictures of
            ``job.visualize``.
    """
    num_class = job.model.num_class
    module = job.model.load(device)
    dataset = job.dataset(*shard)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=user_scattered_collate,
                        num_workers=job.workers, pin_memory=device.type == "cuda")
    all_hooks = list(hooks)
    if job.visualize:
        classes = job.classes()
        all_hooks.insert(0, SavePanels(job.out_dir / "result", classes.palette, classes.names))
    bar = ProgressBar(len(dataset)) if progress else None
    try:
        return evaluate(module, loader, num_class, device, job.options,
                        all_hooks + ([bar] if bar is not None else []))
    finally:
        if bar is not None:
            bar.close()


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
    (BatchNorm folded; ``false`` is the original's arithmetic), ``precision`` (``fp32``, the
    ``VAL.amp`` autocast type or ``int8``), ``backend`` (see :func:`compute_backend`) and
    ``devices``.

    Returns:
        ``(scores, text)``: :func:`~mit_semseg.metrics.scores_from_confusion` output and the
        per-class table followed by the ``[Eval Summary]`` lines.
    """
    names = job.classes().names
    scores = scores_from_confusion(result.confusion)
    info = {
        "checkpoint": str(Path(job.model.weights_dir)
                          / f"{{encoder,decoder}}_{job.model.checkpoint}"),
        "list_val": job.list_val,
        "scales": list(job.scales),
        "flip": bool(job.options.flip),
        "fast_inference": bool(job.model.fast_inference),
        "precision": job.options.amp or job.model.precision,
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
