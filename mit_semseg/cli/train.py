"""Train a segmentation model (``train.py``).

  python train.py --cfg config/ade20k-resnet50dilated-ppm_deepsup.yaml --gpus 0-3 [KEY VALUE ...]
  python train.py --cfg config/synthetic-mobilenetv2dilated-c1_deepsup.yaml --gpus cpu
  torchrun --nproc_per_node 4 train.py --cfg ...            # one process per device (DDP)
  python train.py --cfg ... --resume auto                     # continue a killed run

Writes to cfg.DIR: config.yaml, log.txt, {encoder,decoder,history}_epoch_N.pth,
checkpoint_last.pth and training_curves.png. See docs/training.md.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from typing import Any

import torch

from mit_semseg.cli import common
from mit_semseg.cli.devices import NotSupportedCliException, resolve_devices
from mit_semseg.config import load_config
from mit_semseg.data import TrainDataset, build_train_loader
from mit_semseg.data.loader import device_batches, seed_everything
from mit_semseg.engine import checkpoint as ckpt
from mit_semseg.engine.distributed import DistContext, cleanup_distributed, init_distributed
from mit_semseg.engine.optim import PolySchedule, build_optimizers
from mit_semseg.engine.precision import check_amp, grad_scaler
from mit_semseg.engine.trainer import (
    ResumableCheckpoint,
    TrainState,
    bn_momentum_by_part,
    norm_layer_for,
    parallelize,
    restore_training_state,
    set_bn_momentum,
    train_one_epoch,
)
from mit_semseg.files import atomic_write_text
from mit_semseg.models import build_segmentation_model
from mit_semseg.plotting import plot_training_curves

PROG = "train.py"
logger = logging.getLogger("train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.script_parser(
        PROG, "Train a semantic segmentation network",
        devices_help='devices: "0-3", "gpu0,gpu2", "cpu", "cpux2" (2 CPU replicas)')
    parser.add_argument("--resume", default=None, metavar="PATH|auto",
                        help="continue from a checkpoint_last.pth ('auto': the one in DIR)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        cfg, dist_ctx, devices = setup(args)
        state = build_state(cfg, dist_ctx, devices)
    except common.SETUP_ERRORS as exc:
        return common.usage_error(PROG, exc)
    train(cfg, state, len(devices))
    cleanup_distributed()
    return 0


def setup(args: argparse.Namespace) -> tuple[Any, DistContext, list[torch.device]]:
    """Config, devices, process group, logging and DIR/config.yaml."""
    opts = list(args.opts) + (["TRAIN.resume", args.resume] if args.resume is not None else [])
    cfg = load_config(args.cfg, opts)
    devices = resolve_devices(args.gpus or cfg.DEVICE)
    check_amp(cfg.TRAIN.amp, devices[0], "TRAIN.amp")
    dist_ctx = init_distributed(cfg.DIST.backend, devices[0].type == "cuda")
    if dist_ctx.distributed:
        if len(devices) > 1:
            raise NotSupportedCliException("under torchrun each process trains on one device; "
                                           "give --gpus cpu or --gpus 0 (LOCAL_RANK picks the GPU)")
        if devices[0].type == "cuda":
            devices = [torch.device("cuda", dist_ctx.local_rank)]
    common.setup_logging(cfg.DIR, dist_ctx.rank)
    if dist_ctx.is_main:
        ckpt.remove_stale_temp_files(cfg.DIR)
        atomic_write_text(os.path.join(cfg.DIR, "config.yaml"), cfg.dump())
    logger.info("Loaded configuration file %s\n%s", args.cfg, cfg.dump())
    return cfg, dist_ctx, devices


def build_module(cfg: Any, num_devices: int, saved: dict | None) -> torch.nn.Module:
    """The training module, with the weights to start from.

    Those are, by priority: the resumed state, the original-style ``TRAIN.start_epoch``
    checkpoint, ``MODEL.weights_*`` files, ImageNet (``TRAIN.pretrained``) or random.
    """
    weights = {"weights_encoder": cfg.MODEL.weights_encoder,
               "weights_decoder": cfg.MODEL.weights_decoder}
    if saved is None and cfg.TRAIN.start_epoch > 0:  # the original's way to resume
        paths = ckpt.epoch_checkpoint_paths(cfg.DIR, cfg.TRAIN.start_epoch)
        for name in ("encoder", "decoder"):
            if not os.path.isfile(paths[name]):
                raise FileNotFoundError(f"TRAIN.start_epoch {cfg.TRAIN.start_epoch}: checkpoint "
                                        f"{paths[name]} does not exist")
            weights[f"weights_{name}"] = paths[name]
    module = build_segmentation_model(
        cfg.MODEL.arch_encoder, cfg.MODEL.arch_decoder, cfg.DATASET.num_class,
        fc_dim=cfg.MODEL.fc_dim, pretrained=cfg.TRAIN.pretrained and saved is None,
        deep_sup_scale=cfg.TRAIN.deep_sup_scale,
        norm_layer=norm_layer_for(num_devices, cfg.DIST.sync_bn), **weights)
    if saved is not None:
        module.encoder.load_state_dict(saved["encoder"])
        module.decoder.load_state_dict(saved["decoder"])
    for part, momentum in bn_momentum_by_part(cfg.TRAIN.bn_momentum,
                                              cfg.MODEL.arch_encoder).items():
        set_bn_momentum(getattr(module, part), momentum)
    return module


def build_state(cfg: Any, dist_ctx: DistContext, devices: list[torch.device]) -> TrainState:
    """The run's state, resumed from ``TRAIN.resume`` if given."""
    t = cfg.TRAIN
    resume_path = ckpt.resolve_resume_path(t.resume, cfg.DIR)
    saved = ckpt.load_training_state(resume_path) if resume_path else None
    seed_everything(t.seed)  # identical initial weights on every rank
    module, scattered = parallelize(build_module(cfg, len(devices), saved), devices, dist_ctx,
                                    cfg.DIST.sync_bn)
    net = ckpt.unwrap_model(module)
    state = TrainState(
        module=module,
        optimizers=build_optimizers(net.encoder, net.decoder, lr_encoder=t.lr_encoder,
                                    lr_decoder=t.lr_decoder, momentum=t.beta1,
                                    weight_decay=t.weight_decay),
        schedule=PolySchedule({"encoder": t.lr_encoder, "decoder": t.lr_decoder},
                              t.epoch_iters * t.num_epoch, t.lr_pow),
        scaler=grad_scaler(devices[0], t.amp), epoch_iters=t.epoch_iters, device=devices[0],
        scattered=scattered, amp=t.amp, fix_bn=t.fix_bn, disp_iter=t.disp_iter,
        dist_ctx=dist_ctx, iteration=t.start_epoch * t.epoch_iters)
    seed_everything(t.seed + dist_ctx.rank)  # ranks draw different dropout masks
    if saved is not None:
        restore_training_state(state, saved, resume_path)
    return state


def open_stream(cfg: Any, workers: int, pin_memory: bool, seed: int, local_index: int,
                start_step: int) -> torch.utils.data.DataLoader:
    """One device's training loader (see :func:`mit_semseg.data.loader.device_batches`)."""
    dataset = TrainDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_train, cfg.DATASET,
                           batch_per_gpu=cfg.TRAIN.batch_size_per_gpu)
    return build_train_loader(dataset, num_devices=1, workers=workers, seed=seed,
                              start_iter=start_step, num_steps=cfg.TRAIN.epoch_iters,
                              pin_memory=pin_memory)


def finish_epoch(cfg: Any, state: TrainState, last: ResumableCheckpoint) -> None:
    """The epoch's files (rank 0), then the resumable state (all ranks)."""
    if state.dist_ctx.is_main:
        net = state.net
        ckpt.save_epoch_checkpoint(cfg.DIR, state.epoch, net.encoder, net.decoder, state.history)
        plot_training_curves(state.history, os.path.join(cfg.DIR, "training_curves.png"))
    last.save(state)


def train(cfg: Any, state: TrainState, num_devices: int) -> None:
    """Train until ``TRAIN.num_epoch``, writing the epoch files and the resumable state."""
    t = cfg.TRAIN
    last = ResumableCheckpoint(os.path.join(cfg.DIR, ckpt.LAST_CHECKPOINT), t.checkpoint_every,
                               cfg.dump())
    # TRAIN.workers is shared by this process' devices
    make_loader = functools.partial(open_stream, cfg, -(-t.workers // num_devices),
                                    state.device.type == "cuda")
    rank = state.dist_ctx.rank
    device_indices = [rank * num_devices + i for i in range(num_devices)]
    logger.info("1 Epoch = %d iters; %d device(s) x %d process(es) x %d images per device",
                t.epoch_iters, num_devices, state.dist_ctx.world_size, t.batch_size_per_gpu)
    while state.epoch < t.num_epoch:
        batches = device_batches(make_loader, t.seed, device_indices, state.epoch,
                                 state.iteration % t.epoch_iters)
        train_one_epoch(state, batches, on_step=last.after_step,
                        progress=state.dist_ctx.is_main)
        finish_epoch(cfg, state, last)
    logger.info("Training Done!")
