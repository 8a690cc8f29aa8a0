"""Training, validation and test datasets in the original ``mit_semseg`` format.

Label convention (ADE20K): pixel value 0 = unlabeled, ``1..num_class`` = classes. Datasets
return labels shifted by -1, so ``-1`` is ignored by ``NLLLoss(ignore_index=-1)`` and classes
are ``0..num_class-1``.

``TrainDataset`` returns one *per-device batch* per item: ``batch_per_gpu`` images of the same
orientation, each resized to one short side drawn from ``imgSizes`` (long side capped at
``imgMaxSize``) and pasted at the top-left of a canvas whose sides are multiples of
``padding_constant``. Unlike the original, the canvas padding is labelled ``-1`` (ignored), not
class 0, and the image padding is 0 after normalisation (the ImageNet mean colour).

The content of training item ``i`` is a pure function of ``(seed, i)``: the sample order comes
from one shuffle per pass over the data, and the scale and flips from a generator seeded with
``(seed, i)``. Loading is therefore reproducible whatever the number of workers, and resuming
at step ``k`` only needs the loader to start at index ``k * num_devices``
(:func:`mit_semseg.data.loader.build_train_loader` ``start_iter``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch

from mit_semseg.data.image_io import (
    MAX_IMAGE_PIXELS,
    ImageReadError,
    read_image,
    read_label,
    read_labelled_image,
)
from mit_semseg.data.odgt import TRAIN_KEYS, list_images, records_from
from mit_semseg.data.transforms import (
    normalize_image,
    normalize_into,
    resize_image,
    resize_label,
    round_up,
    scaled_size,
    small_input_warning,
)

__all__ = ["BaseDataset", "TestDataset", "TrainDataset", "ValDataset"]

logger = logging.getLogger(__name__)

# Number of items a TrainDataset reports: items are generated from their index, so any index
# is valid; this bound only keeps samplers that materialise ``range(len(ds))`` cheap.
TRAIN_LENGTH = 2**31 - 1

# Distinct streams of the SeedSequence so the pass shuffles and per-item draws never collide.
_STREAM_ORDER = 0
_STREAM_ITEM = 1
_STREAM_REPLACEMENT = 2

# With skip_bad_samples, a bad sample is replaced by up to this many other draws before the
# item fails (a list where most samples are bad needs fixing, not skipping).
MAX_REPLACEMENTS = 10
# what loading a bad sample raises: missing or unreadable file (OSError), undecodable file
# (ImageReadError), sizes or label values that disagree with the list or num_class
_SAMPLE_ERRORS = (OSError, ValueError)


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Uninitialised tensor; inside a loader worker it is allocated in shared memory.

    A worker sends every batch to the main process through shared memory; a tensor that is
    already there is passed by handle instead of being copied (several MB per batch).
    ``default_collate`` allocates its outputs the same way.
    """
    if torch.utils.data.get_worker_info() is not None:
        numel = int(np.prod(shape))
        try:
            storage = torch.UntypedStorage._new_shared(numel * dtype.itemsize)
        except (AttributeError, RuntimeError):  # private API: fall back to a plain tensor
            return torch.empty(shape, dtype=dtype)
        return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
    return torch.empty(shape, dtype=dtype)


def _option(opt: Any, name: str, default: Any = None) -> Any:
    if isinstance(opt, Mapping):
        return opt.get(name, default)
    return getattr(opt, name, default)


class BaseDataset(torch.utils.data.Dataset):
    """Shared parsing of the options and of the sample list.

    Args:
        odgt: an ``.odgt`` path or a list of record dicts.
        opt: ``cfg.DATASET`` (anything with ``imgSizes``, ``imgMaxSize``, ``padding_constant``,
            optionally ``num_class``, ``segm_downsampling_rate``, ``random_flip``,
            ``max_image_pixels``: files of more pixels are refused before decoding, an
            :class:`~mit_semseg.data.image_io.ImageTooLargeError`; default Pillow's limit).
        required: keys every record must have.
        max_sample: keep only the first ``max_sample`` records (if > 0).
        start_idx, end_idx: keep ``records[start_idx:end_idx]`` (if both >= 0); the slice
            may be empty (an evaluation shard with nothing to do).
    """

    def __init__(
        self,
        odgt: str | os.PathLike | Sequence[Mapping[str, Any]],
        opt: Any,
        required: Sequence[str] = ("fpath_img",),
        max_sample: int = -1,
        start_idx: int = -1,
        end_idx: int = -1,
    ) -> None:
        sizes = _option(opt, "imgSizes")
        self.imgSizes: tuple[int, ...] = (
            (int(sizes),) if isinstance(sizes, (int, np.integer)) else tuple(int(s) for s in sizes)
        )
        self.imgMaxSize = int(_option(opt, "imgMaxSize"))
        self.padding_constant = int(_option(opt, "padding_constant"))
        num_class = _option(opt, "num_class")
        self.num_class: int | None = None if num_class is None else int(num_class)
        self.max_image_pixels = int(_option(opt, "max_image_pixels", MAX_IMAGE_PIXELS))
        if not self.imgSizes or min(self.imgSizes) <= 0 or self.imgMaxSize <= 0:
            raise ValueError(f"imgSizes {self.imgSizes} and imgMaxSize {self.imgMaxSize} "
                             "must be positive")
        if self.padding_constant <= 0:
            raise ValueError(f"padding_constant must be positive, got {self.padding_constant}")

        records, origins = records_from(odgt, required)
        if max_sample > 0:
            records, origins = records[:max_sample], origins[:max_sample]
        if start_idx >= 0 and end_idx >= 0:
            records, origins = records[start_idx:end_idx], origins[start_idx:end_idx]
        self.list_sample: list[dict[str, Any]] = records
        self._origins = origins
        self.num_sample = len(records)
        logger.debug("%s: %d samples", type(self).__name__, self.num_sample)

    def __len__(self) -> int:
        return self.num_sample

    def _image_path(self, record: Mapping[str, Any]) -> str:
        return record["fpath_img"]

    def _load_image(self, index: int, label_shape: Sequence[int] | None = None) -> np.ndarray:
        """The image of record ``index``: upright, or in the orientation ``label_shape`` fits
        (:func:`~mit_semseg.data.image_io.read_labelled_image`)."""
        path = self._image_path(self.list_sample[index])
        try:
            if label_shape is None:
                return read_image(path, max_pixels=self.max_image_pixels)
            return read_labelled_image(path, label_shape, self.max_image_pixels)
        except (FileNotFoundError, ImageReadError) as exc:
            raise type(exc)(f"{exc} (sample {self._origins[index]})") from None

    def _multi_scale(self, image: np.ndarray, index: int) -> list[torch.Tensor]:
        # one (1, 3, h, w) tensor per short side; sides rounded up so the net needs no padding
        height, width = image.shape[:2]
        problem = small_input_warning(height, width, self.imgSizes, self.imgMaxSize,
                                      self.padding_constant)
        if problem:
            logger.warning("%s: %s", self._image_path(self.list_sample[index]), problem)
        out = []
        for short in self.imgSizes:
            h, w = scaled_size(height, width, short, self.imgMaxSize)
            h, w = round_up(h, self.padding_constant), round_up(w, self.padding_constant)
            out.append(normalize_image(resize_image(image, h, w)).unsqueeze(0))
        return out


class _LabelledDataset(BaseDataset):
    """Base for the datasets that read ``(image, label)`` pairs below ``root_dataset``."""

    def __init__(self, root_dataset: str | os.PathLike, odgt: Any, opt: Any, **kwargs: Any):
        super().__init__(odgt, opt, required=TRAIN_KEYS, **kwargs)
        self.root_dataset = str(root_dataset)

    def _image_path(self, record: Mapping[str, Any]) -> str:
        return os.path.join(self.root_dataset, record["fpath_img"])

    def _load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(H, W, 3)`` uint8 RGB and label ``(H, W)`` (0 = unlabeled), validated."""
        record, origin = self.list_sample[index], self._origins[index]
        label_path = os.path.join(self.root_dataset, record["fpath_segm"])
        try:
            label = read_label(label_path, self.max_image_pixels)
        except (FileNotFoundError, ImageReadError) as exc:
            raise type(exc)(f"{exc} (sample {origin})") from None
        # as stored (the original's orientation) unless only the EXIF-upright image fits
        image = self._load_image(index, label.shape)
        height, width = image.shape[:2]
        if label.shape != (height, width):
            raise ValueError(
                f"{label_path}: label size {label.shape[1]}x{label.shape[0]} differs from image "
                f"size {width}x{height} (sample {origin}), also with the image turned upright "
                "by its EXIF orientation tag"
            )
        if (record["width"], record["height"]) != (width, height):
            raise ValueError(
                f"{self._image_path(record)}: image is {width}x{height} but the list says "
                f"{record['width']}x{record['height']} (sample {origin}); rebuild the list with "
                "python -m mit_semseg.data.odgt"
            )
        if self.num_class is not None:
            top = int(label.max())
            if top > self.num_class:
                raise ValueError(
                    f"{label_path}: label value {top} > num_class {self.num_class} "
                    f"(0 = unlabeled, 1..{self.num_class} = classes; sample {origin})"
                )
        return image, label


class TrainDataset(_LabelledDataset):
    """Per-device training batches (see the module docstring).

    Args:
        root_dataset: folder the ``fpath_img``/``fpath_segm`` paths are relative to.
        odgt: ``.odgt`` path or list of records (``fpath_img``, ``fpath_segm``, ``width``,
            ``height``).
        opt: ``cfg.DATASET``: ``imgSizes``, ``imgMaxSize``, ``padding_constant``,
            ``segm_downsampling_rate``, ``random_flip``, ``num_class``.
        batch_per_gpu: images per item.
        seed: seed of the sample stream; ``None`` takes ``torch.initial_seed()`` (so
            ``torch.manual_seed`` before construction makes runs reproducible).
            :func:`~mit_semseg.data.loader.build_train_loader` sets it from its ``seed``.
        skip_bad_samples: a sample that fails to load is logged (once per process) and
            replaced by another one of the same orientation, drawn from ``(seed, index,
            position, attempt)`` alone, so items stay a pure function of the seed and the
            index; False (the default) raises the error, which names the sample.
        max_sample, start_idx, end_idx: subset of the list, as in the original.

    Item ``i`` is ``{'img_data': (B, 3, H, W) float32, 'seg_label': (B, H/r, W/r) int64}``
    with ``B = batch_per_gpu``, ``H, W`` multiples of ``padding_constant``,
    ``r = segm_downsampling_rate`` and -1 = ignore (unlabeled or padding).
    """

    def __init__(
        self,
        root_dataset: str | os.PathLike,
        odgt: Any,
        opt: Any,
        batch_per_gpu: int = 1,
        seed: int | None = None,
        skip_bad_samples: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(root_dataset, odgt, opt, **kwargs)
        self.skip_bad_samples = bool(skip_bad_samples)
        self._reported_bad: set[int] = set()
        if self.num_sample == 0:
            raise ValueError("TrainDataset: the selected slice of the sample list is empty")
        if batch_per_gpu < 1:
            raise ValueError(f"batch_per_gpu must be >= 1, got {batch_per_gpu}")
        self.batch_per_gpu = int(batch_per_gpu)
        self.segm_downsampling_rate = int(_option(opt, "segm_downsampling_rate", 1))
        self.random_flip = bool(_option(opt, "random_flip", True))
        rate = self.segm_downsampling_rate
        if rate < 1 or self.padding_constant % rate != 0:
            raise ValueError(
                f"padding_constant ({self.padding_constant}) must be a multiple of "
                f"segm_downsampling_rate ({rate}) so that labels tile the padded image"
            )
        self.seed = int(torch.initial_seed() if seed is None else seed) % 2**64
        # orientation buckets, as in the original: portrait (h > w) and the rest
        portrait = np.array([r["height"] > r["width"] for r in self.list_sample], dtype=bool)
        self._buckets = [np.flatnonzero(portrait), np.flatnonzero(~portrait)]
        self.batches_per_pass = sum(
            -(-len(b) // self.batch_per_gpu) for b in self._buckets if len(b)
        )
        self._order_cache: tuple[int, np.ndarray] | None = None
        self._warn_small_inputs()

    def _warn_small_inputs(self) -> None:
        """One warning for the samples whose training input would be uselessly small.

        Checked once from the list's sizes, not per batch, so a long run logs it once.
        """
        problems = []
        for record, origin in zip(self.list_sample, self._origins):
            problem = small_input_warning(record["height"], record["width"], self.imgSizes,
                                          self.imgMaxSize, self.padding_constant)
            if problem:
                problems.append(f"{record['fpath_img']} ({origin}): {problem}")
        if problems:
            shown = "\n  ".join(problems[:3])
            more = f"\n  ... and {len(problems) - 3} more" if len(problems) > 3 else ""
            logger.warning("%d training sample(s) give uselessly small inputs:\n  %s%s",
                           len(problems), shown, more)

    def set_seed(self, seed: int) -> None:
        """Changes the stream seed (items are a function of ``(seed, index)``)."""
        self.seed = int(seed) % 2**64
        self._order_cache = None

    def __len__(self) -> int:
        return TRAIN_LENGTH

    def _pass_order(self, pass_index: int) -> np.ndarray:
        """``(batches_per_pass, B)`` record indices of one pass over the data."""
        if self._order_cache is not None and self._order_cache[0] == pass_index:
            return self._order_cache[1]
        rng = np.random.default_rng([self.seed, _STREAM_ORDER, pass_index])
        chunks = []
        for bucket in self._buckets:
            if len(bucket) == 0:
                continue
            count = -(-len(bucket) // self.batch_per_gpu)
            # the last chunk is completed with the first images of the same shuffle
            chunk = np.resize(rng.permutation(bucket), count * self.batch_per_gpu)
            chunks.append(chunk.reshape(count, self.batch_per_gpu))
        order = np.concatenate(chunks)[rng.permutation(self.batches_per_pass)]
        self._order_cache = (pass_index, order)
        return order

    def batch_plan(self, index: int) -> tuple[list[int], int, list[bool]]:
        """Record indices, short side and flips of item ``index`` (a pure function)."""
        if index < 0:
            raise IndexError(f"TrainDataset index must be >= 0, got {index}")
        pass_index, position = divmod(int(index), self.batches_per_pass)
        records = [int(i) for i in self._pass_order(pass_index)[position]]
        rng = np.random.default_rng([self.seed, _STREAM_ITEM, int(index)])
        short = int(self.imgSizes[rng.integers(len(self.imgSizes))])
        flips = rng.random(self.batch_per_gpu) < 0.5
        if not self.random_flip:
            flips[:] = False
        return records, short, [bool(f) for f in flips]

    def _load_or_replace(self, record: int, index: int, position: int
                         ) -> tuple[np.ndarray, np.ndarray]:
        """The pair of ``record``, or with ``skip_bad_samples`` that of a replacement."""
        try:
            return self._load_pair(record)
        except _SAMPLE_ERRORS as exc:
            if not self.skip_bad_samples:
                raise
            error = exc
        portrait = self.list_sample[record]["height"] > self.list_sample[record]["width"]
        bucket = self._buckets[0 if portrait else 1]
        for attempt in range(MAX_REPLACEMENTS):
            if record not in self._reported_bad:
                self._reported_bad.add(record)
                logger.warning("skipping a bad training sample (TRAIN.skip_bad_samples): %s",
                               error)
            rng = np.random.default_rng(
                [self.seed, _STREAM_REPLACEMENT, int(index), position, attempt])
            record = int(bucket[rng.integers(len(bucket))])
            try:
                return self._load_pair(record)
            except _SAMPLE_ERRORS as exc:
                error = exc
        raise RuntimeError(f"training item {index}: {MAX_REPLACEMENTS} replacements of a bad "
                           f"sample failed as well, the last with: {error}; check the list "
                           "with python -m mit_semseg.data.check")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        records, short, flips = self.batch_plan(index)
        pairs = [self._load_or_replace(i, index, b) for b, i in enumerate(records)]
        sizes = [scaled_size(*image.shape[:2], short, self.imgMaxSize) for image, _ in pairs]
        canvas_h = round_up(max(h for h, _ in sizes), self.padding_constant)
        canvas_w = round_up(max(w for _, w in sizes), self.padding_constant)
        rate = self.segm_downsampling_rate
        images = _empty((len(records), 3, canvas_h, canvas_w), torch.float32)
        canvas = images.numpy()
        labels = _empty((len(records), canvas_h // rate, canvas_w // rate), torch.int64)
        labels.fill_(-1)
        for b, ((image, label), (h, w), flip) in enumerate(zip(pairs, sizes, flips)):
            if flip:
                image, label = cv2.flip(image, 1), cv2.flip(label, 1)
            image = resize_image(image, h, w)
            label = resize_label(label, h, w, stride=rate)
            normalize_into(image, canvas[b, :, :h, :w])
            canvas[b, :, h:, :] = 0.0  # padding: 0 after normalisation = the mean colour
            canvas[b, :, :h, w:] = 0.0
            labels[b, : label.shape[0], : label.shape[1]] = torch.from_numpy(
                label.astype(np.int64) - 1
            )
        return {"img_data": images, "seg_label": labels}


class ValDataset(_LabelledDataset):
    """Validation samples: the image at every scale of ``imgSizes`` plus the full label.

    Args:
        root_dataset: folder the paths in ``odgt`` are relative to.
        odgt: ``.odgt`` path or list of records.
        opt: ``cfg.DATASET``.
        start_idx, end_idx: evaluate ``records[start_idx:end_idx]`` (may be empty).

    Item: ``{'img_ori': (H, W, 3) uint8 RGB, 'img_data': [(1, 3, h, w) per scale],
    'seg_label': (1, H, W) int64 (-1 = unlabeled), 'info': fpath_img}``. Scaled sides are
    rounded up to multiples of ``padding_constant`` (a resize, as in the original).
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_sample:
            raise IndexError(f"index {index} out of range for {self.num_sample} samples")
        image, label = self._load_pair(index)
        return {
            "img_ori": image,
            "img_data": self._multi_scale(image, index),
            "seg_label": torch.from_numpy(label.astype(np.int64) - 1).unsqueeze(0),
            "info": self.list_sample[index]["fpath_img"],
        }


class TestDataset(BaseDataset):
    """Images only, for inference.

    Args:
        odgt: a list of ``{'fpath_img': path}`` dicts, an ``.odgt`` path, a list of image
            paths, or an image / folder / ``.txt`` list path (see
            :func:`~mit_semseg.data.odgt.list_images`). Paths are used as given (no root).
        opt: ``cfg.DATASET``.

    Item: ``{'img_ori': (H, W, 3) uint8 RGB, 'img_data': [(1, 3, h, w) per scale],
    'info': path}``.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, odgt: Any, opt: Any, **kwargs: Any) -> None:
        super().__init__(self._as_records(odgt), opt, required=("fpath_img",), **kwargs)

    @staticmethod
    def _as_records(source: Any) -> Any:
        if isinstance(source, (str, os.PathLike)):
            if str(source).lower().endswith(".odgt"):
                return source
            source = list_images(source)
        return [{"fpath_img": str(s)} if isinstance(s, (str, os.PathLike)) else s
                for s in source]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_sample:
            raise IndexError(f"index {index} out of range for {self.num_sample} samples")
        image = self._load_image(index)
        return {
            "img_ori": image,
            "img_data": self._multi_scale(image, index),
            "info": self.list_sample[index]["fpath_img"],
        }
