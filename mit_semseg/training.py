"""Pieces of the training loop used by ``train.py``: schedule, optimizers, seeding, the data
stream, distributed setup and one epoch of optimisation.

Nothing here reads the config; ``train.py`` translates the config into these arguments.

Data-stream design (what makes ``--resume`` exact and torchrun equal to one process):
every device -- a GPU of a DataParallel process, a CPU replica, or a torchrun rank -- has a
*global device index* ``g`` and draws its per-device batches from its own loader, seeded from
``(seed, epoch, g)`` alone. A single process with K devices therefore sees exactly the batches
that K torchrun processes see, and a resumed run rebuilds the epoch's loaders from the same
seeds, starting at the first step not yet consumed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .utils import AverageMeter

__all__ = [
    "AMP_DTYPES",
    "DistContext",
    "PolySchedule",
    "amp_autocast",
    "build_optimizers",
    "build_training_module",
    "data_seed",
    "device_batches",
    "forward_batch",
    "gather_objects",
    "group_weight",
    "init_distributed",
    "make_grad_scaler",
    "move_to_device",
    "new_history",
    "poly_lr",
    "seed_everything",
    "train_one_epoch",
]

logger = logging.getLogger(__name__)

AMP_DTYPES = {"": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- schedule
def poly_lr(base_lr: float, cur_iter: int, max_iters: int, power: float) -> float:
    """Poly learning rate ``base_lr * (1 - cur_iter / max_iters) ** power``.

    Args:
        cur_iter: 0-based index of the step about to be taken, ``0 <= cur_iter < max_iters``.
    """
    if max_iters <= 0 or not 0 <= cur_iter <= max_iters:
        raise ValueError(f"poly_lr needs 0 <= cur_iter ({cur_iter}) <= max_iters ({max_iters})")
    return base_lr * (1.0 - cur_iter / max_iters) ** power


@dataclass(frozen=True)
class PolySchedule:
    """Per-optimizer base learning rates decayed by :func:`poly_lr` over ``max_iters`` steps."""

    base_lrs: Mapping[str, float]
    max_iters: int
    power: float

    def apply(self, optimizers: Mapping[str, torch.optim.Optimizer], cur_iter: int
              ) -> dict[str, float]:
        """Set every parameter group's lr for step ``cur_iter``; return the values set."""
        lrs = {}
        for name, optimizer in optimizers.items():
            lrs[name] = poly_lr(self.base_lrs[name], cur_iter, self.max_iters, self.power)
            for group in optimizer.param_groups:
                group["lr"] = lrs[name]
        return lrs


# ----------------------------------------------------------------------------- optimizers
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
               nn.modules.instancenorm._InstanceNorm)


def group_weight(module: nn.Module) -> list[dict[str, Any]]:
    """Split trainable parameters into a weight-decay group and a no-decay group.

    Convolution and linear weights are decayed; their biases and all normalisation-layer
    parameters are not (as in the original).

    Raises:
        ValueError: a trainable parameter belongs to none of these layer types.
    """
    decay, no_decay, seen = [], [], set()
    for m in module.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            targets = {"weight": decay, "bias": no_decay}
        elif isinstance(m, _NORM_TYPES):
            targets = {"weight": no_decay, "bias": no_decay}
        else:
            continue
        for name, param in m.named_parameters(recurse=False):
            if param.requires_grad and name in targets:
                targets[name].append(param)
                seen.add(id(param))
    unknown = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in seen]
    if unknown:
        raise ValueError(f"group_weight: parameters of unsupported layer types: {unknown}")
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizers(encoder: nn.Module, decoder: nn.Module, *, lr_encoder: float,
                     lr_decoder: float, momentum: float, weight_decay: float
                     ) -> dict[str, torch.optim.SGD]:
    """One SGD per net (``{"encoder": ..., "decoder": ...}``), as the original trained."""
    def sgd(net: nn.Module, lr: float) -> torch.optim.SGD:
        return torch.optim.SGD(group_weight(net), lr=lr, momentum=momentum,
                               weight_decay=weight_decay)

    return {"encoder": sgd(encoder, lr_encoder), "decoder": sgd(decoder, lr_decoder)}


def build_training_module(*, arch_encoder: str, arch_decoder: str, fc_dim: int, num_class: int,
                          weights_encoder: str = "", weights_decoder: str = "",
                          pretrained: bool = False, deep_sup_scale: float = 0.4,
                          norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d) -> nn.Module:
    """Encoder + decoder + ``NLLLoss(ignore_index=-1)`` wrapped in a ``SegmentationModule``.

    A deep-supervision decoder gets the auxiliary loss weighted by ``deep_sup_scale``. ImageNet
    weights are used only when ``pretrained`` and no ``weights_encoder`` file is given.
    """
    from .models import build_segmentation_model

    return build_segmentation_model(
        arch_encoder, arch_decoder, num_class, fc_dim=fc_dim, weights_encoder=weights_encoder,
        weights_decoder=weights_decoder, pretrained=pretrained, deep_sup_scale=deep_sup_scale,
        norm_layer=norm_layer)


# ----------------------------------------------------------------------------- seeding
def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def data_seed(seed: int, epoch: int, device_index: int) -> int:
    """Seed of the data loader of one device for one epoch (independent of anything else)."""
    return int(np.random.SeedSequence([seed, epoch, device_index]).generate_state(1)[0])


# ----------------------------------------------------------------------------- data stream
class _PrivateRng:
    """Python/NumPy/torch-CPU generator states that are swapped in around a loader's work.

    Datasets draw their augmentations from the global generators when they run in the main
    process (``workers=0``), and a DataLoader draws its base seed from torch's global generator
    when it is started. Swapping in a private state makes each device's stream depend on its
    own seed only, and leaves the training process' generators (dropout) untouched.
    """

    def __init__(self, seed: int) -> None:
        with self._swapped_out():
            seed_everything(seed)
            self.state = self._capture()

    @staticmethod
    def _capture() -> tuple:
        return random.getstate(), np.random.get_state(), torch.get_rng_state()

    @staticmethod
    def _restore(state: tuple) -> None:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])

    @contextlib.contextmanager
    def _swapped_out(self) -> Iterator[None]:
        outer = self._capture()
        try:
            yield
        finally:
            self._restore(outer)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self._swapped_out():
            self._restore(self.state)
            try:
                yield
            finally:
                self.state = self._capture()


def device_batches(make_loader: Callable[[int, int, int], Iterable[Any]], seed: int,
                   device_indices: Sequence[int], epoch: int, start_step: int = 0
                   ) -> Iterator[list[dict[str, Any]]]:
    """Yield, per step, one per-device batch dict for each of ``device_indices``.

    Each device's stream is a function of ``(seed, epoch, device index)`` alone (see the module
    docstring), whatever the process layout, the number of loader workers or the state of the
    global random generators, which this function leaves untouched.

    Args:
        make_loader: ``make_loader(seed, local_index, start_step)`` returns an iterable of
            one device's per-device batches (each a dict, or a one-element list holding the
            dict), seeded with ``seed`` and starting at step ``start_step`` of that stream.
        seed: the run's base seed (``TRAIN.seed``).
        device_indices: the global device indices this process trains on.
        epoch: 0-based epoch; together with the device index it fixes the loader's seed.
        start_step: steps of this epoch already consumed (resuming a run).
    """
    streams = []
    for local_index, global_index in enumerate(device_indices):
        stream_seed = data_seed(seed, epoch, global_index)
        rng = _PrivateRng(stream_seed)
        with rng.active():
            streams.append((iter(make_loader(stream_seed, local_index, start_step)), rng))

    def draw() -> list[dict[str, Any]] | None:
        batch = []
        for iterator, rng in streams:
            with rng.active():
                item = next(iterator, None)
            if item is None:
                return None
            batch.append(item[0] if isinstance(item, (list, tuple)) else item)
        return batch

    while (batch := draw()) is not None:
        yield batch


# ----------------------------------------------------------------------------- devices
def move_to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Copy the tensors of a batch dict to ``device`` (other values unchanged)."""
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def forward_batch(module: nn.Module, batch: Sequence[Mapping[str, Any]], device: torch.device,
                  scattered: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a training forward pass and return the mean ``(loss, acc)`` over devices.

    Args:
        batch: one dict per device of this process.
        scattered: ``module`` is a dict-scattering DataParallel that takes the whole list.
    """
    if scattered:
        loss, acc = module(list(batch))
        return loss.mean(), acc.mean()
    if len(batch) != 1:
        raise ValueError(f"a plain module trains on one batch dict per step, got {len(batch)}")
    loss, acc = module(move_to_device(batch[0], device))
    return loss, acc


def amp_autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in ``{"", "bf16", "fp16"}`` (a no-op for "")."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    if not amp:
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("TRAIN.amp 'fp16' needs a CUDA device; use 'bf16' on the CPU")
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def make_grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 on CUDA (bf16 does not need one)."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16" and device.type == "cuda"))


# ----------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str, use_cuda: bool) -> DistContext:
    """Join the torchrun process group if ``WORLD_SIZE`` > 1 in the environment.

    Args:
        backend: "auto" (nccl with CUDA, gloo otherwise), "nccl" or "gloo".
        use_cuda: the processes train on CUDA devices.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if backend == "nccl" and not use_cuda:
        raise ValueError("DIST.backend 'nccl' needs CUDA devices; use 'gloo' on the CPU")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Collect one picklable object per rank (``[obj]`` when not distributed)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def _mean_over_ranks(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.distributed:
        values = values.clone()
        dist.all_reduce(values)
        values /= ctx.world_size
    return values


# ----------------------------------------------------------------------------- the loop
def new_history() -> dict[str, dict[str, list]]:
    """Empty training history in the original's format plus iteration and lr lists."""
    keys = ("epoch", "iteration", "loss", "acc", "lr_encoder", "lr_decoder")
    return {"train": {k: [] for k in keys}}


def train_one_epoch(
    module: nn.Module,
    batches: Iterable[Sequence[Mapping[str, Any]]],
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedule: PolySchedule,
    *,
    epoch: int,
    epoch_iters: int,
    start_iter: int = 0,
    device: torch.device,
    scattered: bool = False,
    amp: str = "",
    scaler: torch.amp.GradScaler | None = None,
    fix_bn: bool = False,
    disp_iter: int = 20,
    history: dict | None = None,
    ctx: DistContext | None = None,
    on_step: Callable[[int], None] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Train for the steps ``start_iter .. epoch_iters - 1`` of 0-based ``epoch``.

    Before each step the poly schedule sets the learning rates for the global iteration
    ``epoch * epoch_iters + i``. Every ``disp_iter`` steps the averaged loss/accuracy is
    logged and a point is appended to ``history``. ``on_step(finished_iterations)`` runs after
    each step (``train.py`` writes the resumable checkpoint from it).

    Returns:
        ``{"loss": ..., "acc": ...}`` averaged over the steps run (and over ranks).
    """
    ctx = ctx or DistContext()
    scaler = scaler or make_grad_scaler(device, amp)
    module.train(not fix_bn)
    loss_meter, acc_meter = AverageMeter(), AverageMeter()
    time_meter, data_meter = AverageMeter(), AverageMeter()
    steps = range(start_iter, epoch_iters)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epoch_iters, initial=start_iter, desc=f"epoch {epoch + 1}",
                   dynamic_ncols=True, leave=False)
    iterator = iter(batches)
    tic = time.perf_counter()
    for i in steps:
        try:
            batch = next(iterator)
        except StopIteration:
            raise RuntimeError(f"the data stream ended after {i} of {epoch_iters} steps") from None
        data_meter.update(time.perf_counter() - tic)
        cur_iter = epoch * epoch_iters + i
        lrs = schedule.apply(optimizers, cur_iter)
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        with amp_autocast(device, amp):
            loss, acc = forward_batch(module, batch, device, scattered)
        # averaged over ranks before the check, so that every rank stops together
        stats = _mean_over_ranks(torch.stack([loss.detach().float(), acc.detach().float()]),
                                 ctx).tolist()
        if not math.isfinite(stats[0]):
            raise FloatingPointError(
                f"loss is {stats[0]} at epoch {epoch + 1}, iteration {i}; check the labels "
                "(0..num_class, 0 = unlabeled) and lower the learning rate")
        scaler.scale(loss).backward()
        for optimizer in optimizers.values():
            scaler.step(optimizer)
        scaler.update()
        loss_meter.update(stats[0])
        acc_meter.update(stats[1])
        time_meter.update(time.perf_counter() - tic)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_meter.average():.4f}",
                            acc=f"{100 * acc_meter.average():.2f}%")
        if i % disp_iter == 0 or i == epoch_iters - 1:
            logger.info(
                "Epoch: [%d][%d/%d], Time: %.2f, Data: %.2f, lr_encoder: %.6f, lr_decoder: %.6f, "
                "Accuracy: %4.2f, Loss: %.6f", epoch + 1, i, epoch_iters, time_meter.average(),
                data_meter.average(), lrs["encoder"], lrs["decoder"],
                100 * acc_meter.average(), loss_meter.average())
            if history is not None:
                record = history["train"]
                record["epoch"].append(epoch + i / epoch_iters)
                record["iteration"].append(cur_iter)
                record["loss"].append(stats[0])
                record["acc"].append(stats[1])
                record["lr_encoder"].append(lrs["encoder"])
                record["lr_decoder"].append(lrs["decoder"])
        if on_step is not None:
            on_step(cur_iter + 1)
        tic = time.perf_counter()
    if bar is not None:
        bar.close()
    return {"loss": loss_meter.average() or 0.0, "acc": acc_meter.average() or 0.0}
