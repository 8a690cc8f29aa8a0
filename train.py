"""Train a segmentation model.

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
import sys

import torch

from mit_semseg import checkpoint as ckpt
from mit_semseg import training as tr
from mit_semseg.config import ConfigError, load_config
from mit_semseg.lib.nn.distributed import cleanup_distributed
from mit_semseg.utils import NotSupportedCliException, resolve_devices, setup_logging
from mit_semseg.viz import plot_training_curves

logger = logging.getLogger("train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a semantic segmentation network")
    parser.add_argument("--cfg", default="config/ade20k-resnet50dilated-ppm_deepsup.yaml",
                        metavar="FILE", help="YAML config file")
    parser.add_argument("--gpus", default=None,
                        help='devices: "0-3", "gpu0,gpu2", "cpu", "cpux2" (2 CPU replicas); '
                             "default: the config's DEVICE")
    parser.add_argument("--resume", default=None, metavar="PATH|auto",
                        help="continue from a checkpoint_last.pth ('auto': the one in DIR)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def setup(args: argparse.Namespace):
    """Config, devices, process group, logging and DIR/config.yaml."""
    opts = list(args.opts) + (["TRAIN.resume", args.resume] if args.resume is not None else [])
    cfg = load_config(args.cfg, opts)
    devices = resolve_devices(args.gpus or cfg.DEVICE)
    if cfg.TRAIN.amp == "fp16" and devices[0].type != "cuda":
        raise ValueError("TRAIN.amp fp16 needs a CUDA device; use TRAIN.amp bf16 on the CPU")
    ctx = tr.init_distributed(cfg.DIST.backend, devices[0].type == "cuda")
    if ctx.distributed:
        if len(devices) > 1:
            raise NotSupportedCliException("under torchrun each process trains on one device; "
                                           "give --gpus cpu or --gpus 0 (LOCAL_RANK picks the GPU)")
        if devices[0].type == "cuda":
            devices = [torch.device("cuda", ctx.local_rank)]
    setup_logging(cfg.DIR, ctx.rank)
    if ctx.is_main:
        ckpt.remove_stale_temp_files(cfg.DIR)
        ckpt.atomic_write_text(os.path.join(cfg.DIR, "config.yaml"), cfg.dump())
    logger.info("Loaded configuration file %s\n%s", args.cfg, cfg.dump())
    return cfg, ctx, devices


def build(cfg, ctx: tr.DistContext, devices: list[torch.device], resume_state: dict | None):
    """The training module, wrapped for the device setup, and whether it takes the whole list
    of per-device batch dicts (dict-scattering DataParallel) rather than one dict."""
    weights = {"weights_encoder": cfg.MODEL.weights_encoder,
               "weights_decoder": cfg.MODEL.weights_decoder}
    if resume_state is None and cfg.TRAIN.start_epoch > 0:  # the original's way to resume
        paths = ckpt.epoch_checkpoint_paths(cfg.DIR, cfg.TRAIN.start_epoch)
        for name in ("encoder", "decoder"):
            if not os.path.isfile(paths[name]):
                raise FileNotFoundError(f"TRAIN.start_epoch {cfg.TRAIN.start_epoch}: checkpoint "
                                        f"{paths[name]} does not exist")
            weights[f"weights_{name}"] = paths[name]
    norm_layer = torch.nn.BatchNorm2d
    multi_device = len(devices) > 1
    if multi_device and cfg.DIST.sync_bn:
        from mit_semseg.lib.nn import SynchronizedBatchNorm2d
        # "plus": 1/sqrt(var + eps) like nn.BatchNorm2d and DDP's synced BN, so that one
        # device, several devices and several processes compute the same thing
        norm_layer = functools.partial(SynchronizedBatchNorm2d, eps_mode="plus")
    module = tr.build_training_module(
        arch_encoder=cfg.MODEL.arch_encoder, arch_decoder=cfg.MODEL.arch_decoder,
        fc_dim=cfg.MODEL.fc_dim, num_class=cfg.DATASET.num_class,
        pretrained=cfg.TRAIN.pretrained and resume_state is None,
        deep_sup_scale=cfg.TRAIN.deep_sup_scale, norm_layer=norm_layer, **weights)
    if resume_state is not None:
        module.encoder.load_state_dict(resume_state["encoder"])
        module.decoder.load_state_dict(resume_state["decoder"])
    module.to(devices[0])
    if ctx.distributed:
        if cfg.DIST.sync_bn:
            from mit_semseg.lib.nn import convert_sync_batchnorm
            module = convert_sync_batchnorm(module)
        cuda_ids = [devices[0].index] if devices[0].type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=cuda_ids), False
    if multi_device:  # one process, several devices: the original's dict-scattering DP
        from mit_semseg.lib.nn import UserScatteredDataParallel
        if devices[0].type == "cpu":
            return UserScatteredDataParallel(module, num_cpu_replicas=len(devices)), True
        return UserScatteredDataParallel(module, device_ids=[d.index for d in devices]), True
    return module, False


def main(argv: list[str] | None = None) -> None:
    ctx = train(parse_args(argv))
    if ctx.distributed:
        cleanup_distributed()


def train(args: argparse.Namespace) -> tr.DistContext:
    try:
        cfg, ctx, devices = setup(args)
        resume_path = ckpt.resolve_resume_path(cfg.TRAIN.resume, cfg.DIR)
        state = ckpt.load_training_state(resume_path) if resume_path else None
        tr.seed_everything(cfg.TRAIN.seed)  # identical initial weights on every rank
        module, scattered = build(cfg, ctx, devices, state)
    except (ConfigError, FileNotFoundError, NotSupportedCliException, ValueError) as exc:
        sys.exit(f"train.py: error: {exc}")
    net = ckpt.unwrap_model(module)
    t = cfg.TRAIN
    optimizers = tr.build_optimizers(net.encoder, net.decoder, lr_encoder=t.lr_encoder,
                                     lr_decoder=t.lr_decoder, momentum=t.beta1,
                                     weight_decay=t.weight_decay)
    scaler = tr.make_grad_scaler(devices[0], t.amp)
    history, done = tr.new_history(), t.start_epoch * t.epoch_iters
    tr.seed_everything(t.seed + ctx.rank)  # ranks draw different dropout masks
    if state is not None:
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        if state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        history, done = state["history"], state["iteration"]
        if state["world_size"] != ctx.world_size:
            logger.warning("%s was written by %d process(es), now %d: the data order differs",
                           resume_path, state["world_size"], ctx.world_size)
        ckpt.restore_rng_state(state["rng"][ctx.rank % len(state["rng"])])
        logger.info("Resuming from %s at iteration %d", resume_path, done)

    from mit_semseg.data import TrainDataset, build_train_loader

    workers = -(-t.workers // len(devices))  # TRAIN.workers shared by this process' devices

    def make_loader(seed: int, local_index: int, start_step: int):
        dataset = TrainDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_train, cfg.DATASET,
                               batch_per_gpu=t.batch_size_per_gpu)
        return build_train_loader(dataset, num_devices=1, workers=workers, seed=seed,
                                  start_iter=start_step, num_steps=t.epoch_iters,
                                  pin_memory=devices[0].type == "cuda")

    def save_state(finished: int) -> None:
        rngs = tr.gather_objects(ckpt.capture_rng_state(), ctx)  # collective: all ranks call
        if ctx.is_main:
            ckpt.save_training_state(
                os.path.join(cfg.DIR, ckpt.LAST_CHECKPOINT), encoder=net.encoder,
                decoder=net.decoder, optimizers=optimizers, epoch=finished // t.epoch_iters,
                iteration=finished, history=history, rng=rngs, scaler=scaler,
                world_size=ctx.world_size, config=cfg.dump())

    def on_step(finished: int) -> None:
        # the epoch's last step is saved by the end-of-epoch code, after the epoch files
        if t.checkpoint_every and finished % t.checkpoint_every == 0 \
                and finished % t.epoch_iters != 0:
            save_state(finished)

    schedule = tr.PolySchedule({"encoder": t.lr_encoder, "decoder": t.lr_decoder},
                               t.epoch_iters * t.num_epoch, t.lr_pow)
    device_indices = [ctx.rank * len(devices) + i for i in range(len(devices))]
    logger.info("1 Epoch = %d iters; %d device(s) x %d process(es) x %d images per device",
                t.epoch_iters, len(devices), ctx.world_size, t.batch_size_per_gpu)
    for epoch in range(done // t.epoch_iters, t.num_epoch):
        start_iter = done - epoch * t.epoch_iters
        batches = tr.device_batches(make_loader, t.seed, device_indices, epoch, start_iter)
        tr.train_one_epoch(module, batches, optimizers, schedule, epoch=epoch,
                           epoch_iters=t.epoch_iters, start_iter=start_iter, device=devices[0],
                           scattered=scattered, amp=t.amp, scaler=scaler, fix_bn=t.fix_bn,
                           disp_iter=t.disp_iter, history=history, ctx=ctx, on_step=on_step,
                           progress=ctx.is_main)
        done = (epoch + 1) * t.epoch_iters
        if ctx.is_main:
            ckpt.save_epoch_checkpoint(cfg.DIR, epoch + 1, net.encoder, net.decoder, history)
            plot_training_curves(history, os.path.join(cfg.DIR, "training_curves.png"))
        save_state(done)
    logger.info("Training Done!")
    return ctx


if __name__ == "__main__":
    main()
