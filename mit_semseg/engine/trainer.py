"""The state of a training run and one epoch of optimisation.

:class:`TrainState` holds everything that changes or is needed while training: the (possibly
wrapped) module, the optimizers and their schedule, the gradient scaler, the history, the
distributed context and the number of finished steps. :func:`train_one_epoch` runs the steps
left in the current epoch; :class:`ResumableCheckpoint` writes and :func:`restore_training_state`
reads back what an exact resume needs. Nothing here reads the config: ``cli/train.py``
translates it. How the per-device batches are drawn (and why resuming and torchrun are exact)
is explained in :mod:`mit_semseg.data.loader`.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mit_semseg.engine.checkpoint import (
    RunStamp,
    capture_rng_state,
    process_rng_state,
    restore_rng_state,
    save_training_state,
    unwrap_model,
)
from mit_semseg.engine.distributed import DistContext
from mit_semseg.engine.optim import PolySchedule
from mit_semseg.nn import SynchronizedBatchNorm2d, UserScatteredDataParallel, convert_sync_batchnorm
from mit_semseg.nn.precision import autocast

__all__ = [
    "BN_MOMENTUM_AS_ORIGINAL",
    "ResumableCheckpoint",
    "TrainState",
    "bn_momentum_by_part",
    "check_labels",
    "forward_batch",
    "new_history",
    "norm_layer_for",
    "parallelize",
    "restore_training_state",
    "set_bn_momentum",
    "train_one_epoch",
    "train_step",
]

logger = logging.getLogger(__name__)


def new_history() -> dict[str, dict[str, list]]:
    """Empty training history in the original's format plus iteration and lr lists."""
    keys = ("epoch", "iteration", "loss", "acc", "lr_encoder", "lr_decoder")
    return {"train": {k: [] for k in keys}}


@dataclass
class TrainState:
    """Everything a training run works with, in one place.

    Attributes:
        module: the training module (``module(batch) -> (loss, acc)``), possibly wrapped in
            DDP or the dict-scattering DataParallel.
        optimizers: ``{"encoder": ..., "decoder": ...}``.
        schedule: sets the optimizers' learning rates before every step.
        scaler: gradient scaler (enabled for fp16 on CUDA only).
        epoch_iters: steps per epoch (``TRAIN.epoch_iters``).
        device: this process' (first) device.
        scattered: ``module`` takes the whole list of per-device batch dicts (DataParallel);
            otherwise it takes one dict.
        amp: autocast mode, ``""``, ``"bf16"`` or ``"fp16"``.
        fix_bn: keep the module in eval mode (frozen BatchNorm statistics, no dropout).
        disp_iter: log and record a history point every this many steps.
        dist_ctx: this process' place in a torchrun job.
        max_nonfinite_steps: with an enabled gradient scaler (fp16), how many consecutive steps
            with a non-finite loss the scaler may skip before training stops; see
            :func:`train_step`.
        history: see :func:`new_history`.
        iteration: optimisation steps finished since the start of training.
        nonfinite_steps: consecutive steps with a non-finite loss up to now.
    """

    module: nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    schedule: PolySchedule
    scaler: torch.amp.GradScaler
    epoch_iters: int
    device: torch.device
    scattered: bool = False
    amp: str = ""
    fix_bn: bool = False
    disp_iter: int = 20
    dist_ctx: DistContext = field(default_factory=DistContext)
    max_nonfinite_steps: int = 10
    history: dict[str, Any] = field(default_factory=new_history)
    iteration: int = 0
    nonfinite_steps: int = 0

    @property
    def net(self) -> nn.Module:
        """The module inside its DataParallel/DDP wrapper (with ``.encoder``/``.decoder``)."""
        return unwrap_model(self.module)

    @property
    def epoch(self) -> int:
        """0-based epoch of the next step."""
        return self.iteration // self.epoch_iters

    @property
    def cuda_devices(self) -> list[torch.device]:
        """The GPUs this process trains on, in local order (empty on the CPU)."""
        if not self.scattered:
            return [self.device] if self.device.type == "cuda" else []
        if getattr(self.module, "cpu_mode", True):
            return []
        return [torch.device("cuda", i) for i in self.module.device_ids]


# ----------------------------------------------------------------------------- BatchNorm
# ``TRAIN.bn_momentum`` value that selects the original's momentum for each part (below)
BN_MOMENTUM_AS_ORIGINAL = -1.0
# The original (1.0.0) built its BatchNorms with its SynchronizedBatchNorm2d's default momentum,
# 0.001, except HRNet's encoder, which passed 0.1 (tests/engine/test_trainer.py checks this
# against the original's modules).
_ORIGINAL_BN_MOMENTUM = 0.001
_ORIGINAL_ENCODER_BN_MOMENTUM = {"hrnetv2": 0.1}


def bn_momentum_by_part(momentum: float, arch_encoder: str) -> dict[str, float]:
    """The running-statistics momentum of the encoder's and of the decoder's BatchNorms.

    Args:
        momentum: ``TRAIN.bn_momentum``: one value in ``(0, 1]`` for every layer, or
            :data:`BN_MOMENTUM_AS_ORIGINAL` for the original's values.
        arch_encoder: the encoder's name (``MODEL.arch_encoder``).

    Returns:
        ``{"encoder": ..., "decoder": ...}``.
    """
    if momentum == BN_MOMENTUM_AS_ORIGINAL:
        encoder = _ORIGINAL_ENCODER_BN_MOMENTUM.get(arch_encoder, _ORIGINAL_BN_MOMENTUM)
        return {"encoder": encoder, "decoder": _ORIGINAL_BN_MOMENTUM}
    if not 0 < momentum <= 1:
        raise ValueError(f"TRAIN.bn_momentum must be in (0, 1] or {BN_MOMENTUM_AS_ORIGINAL:g} "
                         f"(the original's values), got {momentum:g}")
    return {"encoder": momentum, "decoder": momentum}


def set_bn_momentum(module: nn.Module, momentum: float) -> int:
    """Sets the running-statistics momentum of every BatchNorm in ``module``, in place.

    Plain, synchronised and distributed BatchNorms of any dimension are all ``_BatchNorm`` s;
    the attribute survives their conversions (:func:`mit_semseg.nn.convert_sync_batchnorm`
    and the replicas of the data-parallel wrapper copy it).

    Returns:
        the number of layers set.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.momentum = momentum
    return len(norms)


# ----------------------------------------------------------------------------- devices
def norm_layer_for(num_devices: int, sync_bn: bool) -> Callable[..., nn.Module]:
    """The BatchNorm class for one process driving ``num_devices`` devices."""
    if num_devices > 1 and sync_bn:
        # "plus": 1/sqrt(var + eps) like nn.BatchNorm2d and DDP's synced BN, so that one
        # device, several devices and several processes compute the same thing
        return functools.partial(SynchronizedBatchNorm2d, eps_mode="plus")
    return nn.BatchNorm2d


def parallelize(module: nn.Module, devices: Sequence[torch.device], dist_ctx: DistContext,
                sync_bn: bool) -> tuple[nn.Module, bool]:
    """Move ``module`` to ``devices[0]`` and wrap it for the device setup.

    Returns:
        ``(module, scattered)``: DDP under torchrun (BatchNorm synchronised over the ranks with
        ``sync_bn``); the dict-scattering DataParallel over several devices of one process
        (GPUs or CPU replicas), which takes the list of per-device batches (``scattered``);
        the module itself on one device.
    """
    module.to(devices[0])
    if dist_ctx.distributed:
        if sync_bn:
            module = convert_sync_batchnorm(module)
        cuda_ids = [devices[0].index] if devices[0].type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=cuda_ids), False
    if len(devices) > 1:  # one process, several devices: the original's dict-scattering DP
        if devices[0].type == "cpu":
            return UserScatteredDataParallel(module, num_cpu_replicas=len(devices)), True
        return UserScatteredDataParallel(module, device_ids=[d.index for d in devices]), True
    return module, False


def _move_to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
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
    loss, acc = module(_move_to_device(batch[0], device))
    return loss, acc


# ----------------------------------------------------------------------------- the loop
def check_labels(batch: Sequence[Mapping[str, Any]], num_class: int, where: str) -> None:
    """Raise ``ValueError`` if a host ``seg_label`` of ``batch`` holds a value outside
    ``-1..num_class-1``, before it can reach a CUDA kernel.

    On a GPU such a value is a device-side assert in the loss, reported later at an unrelated
    line and leaving the CUDA context unusable. Labels already on a device are not read here
    (that would wait for the device); the datasets check every label file as they read it.
    """
    for index, item in enumerate(batch):
        label = item.get("seg_label")
        if not torch.is_tensor(label) or label.device.type != "cpu" or label.numel() == 0:
            continue
        low, high = (int(v) for v in label.aminmax())
        if low < -1 or high >= num_class:
            raise ValueError(
                f"training labels of device {index} at {where} hold values {low}..{high}, "
                f"but only -1 (ignored) and 0..{num_class - 1} are valid (label PNG values "
                f"0..{num_class}); check DATASET.num_class, and find the file with "
                f"python -m mit_semseg.data.check LIST --num-class {num_class}")


def _check_finite_loss(state: TrainState, loss: float, where: str) -> bool:
    """Count a non-finite ``loss`` and raise when the policy of :func:`train_step` says so;
    return whether the step is to be skipped."""
    state.nonfinite_steps = 0 if math.isfinite(loss) else state.nonfinite_steps + 1
    if state.nonfinite_steps == 0:
        return False
    hint = "check the labels (0..num_class, 0 = unlabeled) and lower the learning rate"
    if not state.scaler.is_enabled():
        raise FloatingPointError(f"loss is {loss} at {where}; {hint}")
    if state.nonfinite_steps > state.max_nonfinite_steps:
        raise FloatingPointError(
            f"loss is {loss} at {where}, the {state.nonfinite_steps}th non-finite loss in a "
            f"row (TRAIN.max_nonfinite_steps {state.max_nonfinite_steps}); {hint}")
    logger.warning("loss is %s at %s: the gradient scaler skips this step (%d in a row, "
                   "at most %d)", loss, where, state.nonfinite_steps, state.max_nonfinite_steps)
    return True


def train_step(state: TrainState, batch: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """One optimisation step at the learning rates already set; advances ``state.iteration``.

    A non-finite loss stops training at once, except with an enabled gradient scaler (fp16):
    there it is one of the overflows the scaler exists for, so the step goes through the
    scaler, which finds non-finite gradients, skips the update and lowers its scale, and the
    buffers (BatchNorm running statistics), which that forward pass already updated, are put
    back as they were; only more than ``state.max_nonfinite_steps`` such steps in a row stop
    training.

    Returns:
        ``(loss, acc)`` of the step, averaged over devices and ranks.

    Raises:
        ValueError: a label is out of range (see :func:`check_labels`).
        FloatingPointError: the loss is not finite, as above (on every rank at once).
    """
    epoch, step = divmod(state.iteration, state.epoch_iters)
    where = f"epoch {epoch + 1}, iteration {step}"
    num_class = getattr(getattr(state.net, "decoder", None), "num_class", None)
    if num_class is not None:
        check_labels(batch, num_class, where)
    for optimizer in state.optimizers.values():
        optimizer.zero_grad(set_to_none=True)
    buffers = list(state.net.buffers()) if state.scaler.is_enabled() else []
    with torch.no_grad():
        saved_buffers = [b.clone() for b in buffers]
    with autocast(state.device, state.amp):
        loss, acc = forward_batch(state.module, batch, state.device, state.scattered)
    # averaged over ranks before the check, so that every rank decides alike
    stats = state.dist_ctx.mean(torch.stack([loss.detach().float(), acc.detach().float()]))
    mean_loss, mean_acc = stats.tolist()
    skipped = _check_finite_loss(state, mean_loss, where)
    state.scaler.scale(loss).backward()
    # an optimizer whose learning rate is 0 (a frozen part) takes no step: SGD would still
    # gather momentum (and weight decay) to release at once when the part is unfrozen
    stepping = [o for o in state.optimizers.values()
                if any(group["lr"] != 0 for group in o.param_groups)]
    for optimizer in stepping:
        state.scaler.step(optimizer)
    if stepping:  # the scaler's update needs the overflow checks of a step
        state.scaler.update()
    if skipped:  # after the backward pass, which checks that its saved inputs are unchanged
        with torch.no_grad():
            for buffer, saved in zip(buffers, saved_buffers):
                buffer.copy_(saved)
    state.iteration += 1
    return mean_loss, mean_acc


class _EpochLog:
    """Running means, progress bar, log lines and history points of one epoch."""

    def __init__(self, state: TrainState, start: int, progress: bool) -> None:
        self.state = state
        self.epoch = state.epoch
        self.sums = {"loss": 0.0, "acc": 0.0, "time": 0.0, "data": 0.0}
        self.counts = dict.fromkeys(self.sums, 0)
        self.bar = None
        if progress:
            from tqdm import tqdm

            # each epoch's bar stays as its summary line, so that whatever is printed after
            # it (the next bar, an error, the stop message) starts a line of its own
            self.bar = tqdm(total=state.epoch_iters, initial=start, desc=f"epoch {self.epoch + 1}",
                            dynamic_ncols=True)

    def mean(self, name: str) -> float:
        return self.sums[name] / self.counts[name] if self.counts[name] else 0.0

    def record(self, step: int, lrs: Mapping[str, float], loss: float, acc: float,
               seconds: float, data_seconds: float) -> None:
        """Account for step ``step`` (0-based, in this epoch) that has just finished; a step
        skipped for a non-finite loss stays out of the running means."""
        for name, value in (("loss", loss), ("acc", acc), ("time", seconds),
                            ("data", data_seconds)):
            if math.isfinite(value):
                self.sums[name] += value
                self.counts[name] += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{self.mean('loss'):.4f}",
                                 acc=f"{100 * self.mean('acc'):.2f}%")
        epoch_iters = self.state.epoch_iters
        if step % self.state.disp_iter == 0 or step == epoch_iters - 1:
            logger.info(
                "Epoch: [%d][%d/%d], Time: %.2f, Data: %.2f, lr_encoder: %.6f, lr_decoder: %.6f, "
                "Accuracy: %4.2f, Loss: %.6f", self.epoch + 1, step, epoch_iters,
                self.mean("time"), self.mean("data"), lrs["encoder"], lrs["decoder"],
                100 * self.mean("acc"), self.mean("loss"))
            record = self.state.history["train"]
            record["epoch"].append(self.epoch + step / epoch_iters)
            record["iteration"].append(self.epoch * epoch_iters + step)
            record["loss"].append(loss)
            record["acc"].append(acc)
            for name, lr in lrs.items():
                record[f"lr_{name}"].append(lr)

    def close(self) -> dict[str, float]:
        if self.bar is not None:
            self.bar.close()
        return {"loss": self.mean("loss"), "acc": self.mean("acc")}


def train_one_epoch(state: TrainState, batches: Iterable[Sequence[Mapping[str, Any]]], *,
                    on_step: Callable[[TrainState], None] | None = None,
                    progress: bool = False) -> dict[str, float]:
    """Train the steps left in the current epoch (``state.epoch``), one batch per step.

    Before each step the schedule sets the learning rates for the global step
    ``state.iteration``; every ``state.disp_iter`` steps (and at the last one) the running means
    are logged and a point is added to ``state.history``. ``on_step(state)`` runs after each step.

    Args:
        batches: per step, one batch dict per device of this process (see
            :func:`mit_semseg.data.loader.device_batches`).
        progress: show a progress bar.

    Returns:
        ``{"loss": ..., "acc": ...}`` averaged over the steps run (and over ranks).

    Raises:
        RuntimeError: ``batches`` ended before the epoch did.
    """
    state.module.train(not state.fix_bn)
    start = state.iteration % state.epoch_iters
    log = _EpochLog(state, start, progress)
    iterator = iter(batches)
    tic = time.perf_counter()
    try:
        for step in range(start, state.epoch_iters):
            batch = next(iterator, None)
            if batch is None:
                raise RuntimeError(f"the data stream ended after {step} of "
                                   f"{state.epoch_iters} steps")
            data_seconds = time.perf_counter() - tic
            lrs = state.schedule.apply(state.optimizers, state.iteration)
            loss, acc = train_step(state, batch)
            log.record(step, lrs, loss, acc, time.perf_counter() - tic, data_seconds)
            if on_step is not None:
                on_step(state)
            tic = time.perf_counter()
    except BaseException:  # a write error or a stop: the bar ends its line first
        log.close()
        raise
    return log.close()


# ----------------------------------------------------------------------------- resuming
@dataclass(frozen=True)
class ResumableCheckpoint:
    """Writes the state an exact resume needs (``checkpoint_last.pth``).

    Attributes:
        path: the file (``DIR/checkpoint_last.pth``).
        every: also write it every this many steps (``TRAIN.checkpoint_every``; 0 = only at
            the end of each epoch); :meth:`due` tells when (the loop's ``on_step`` hook,
            :class:`mit_semseg.engine.run_control.RunControl`, asks it).
        stamp: the writing run (world size, devices, config, job identity), stored with the
            state so that a run resuming from it can be compared with it.
    """

    path: str
    every: int = 0
    stamp: RunStamp = RunStamp()

    def save(self, state: TrainState) -> None:
        """Write the file (rank 0); a collective: every rank must call it."""
        rngs = state.dist_ctx.gather(capture_rng_state(state.cuda_devices))
        if state.dist_ctx.is_main:
            net = state.net
            save_training_state(
                self.path, encoder=net.encoder, decoder=net.decoder,
                optimizers=state.optimizers, epoch=state.epoch, iteration=state.iteration,
                history=state.history, rng=rngs, scaler=state.scaler, stamp=self.stamp)

    def due(self, state: TrainState) -> bool:
        """The periodic save is due: ``every`` steps, except at an epoch's end, which the
        end-of-epoch code saves after the epoch's files."""
        done = state.iteration
        return bool(self.every) and done % self.every == 0 and done % state.epoch_iters != 0


def restore_training_state(state: TrainState, saved: Mapping[str, Any], source: str) -> None:
    """Continue from ``saved`` (a loaded ``checkpoint_last.pth`` from ``source``): optimizers,
    scaler, history, step count and this rank's random generators.

    The nets' weights are loaded by the caller before the module is wrapped.
    """
    for name, optimizer in state.optimizers.items():
        optimizer.load_state_dict(saved["optimizers"][name])
    if saved["scaler"] is not None:
        state.scaler.load_state_dict(saved["scaler"])
    state.history, state.iteration = saved["history"], saved["iteration"]
    world_size = state.dist_ctx.world_size
    if saved["world_size"] != world_size:
        logger.warning("%s was written by %d process(es), now %d: the data order differs",
                       source, saved["world_size"], world_size)
    gpus = state.cuda_devices
    rank = state.dist_ctx.rank
    restore_rng_state(process_rng_state(saved["rng"], rank, rank * len(gpus), len(gpus)), gpus)
    logger.info("Resuming from %s at iteration %d", source, state.iteration)
