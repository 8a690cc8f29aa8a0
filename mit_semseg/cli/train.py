"""Train a segmentation model (``train.py``).

  python train.py --cfg ade20k-resnet50dilated-ppm_deepsup --gpus 0-3 [KEY VALUE ...]
  python train.py --cfg config/synthetic-mobilenetv2dilated-c1_deepsup.yaml --gpus cpu
  torchrun --nproc_per_node 4 train.py --cfg ...            # one process per device (DDP)
  python train.py --cfg ... --resume auto                     # continue a stopped or killed run

Before building the model (and downloading ImageNet weights) it checks the model names, the
training list, the weight files to start from and DIR (:mod:`mit_semseg.cli.preflight`);
``MODEL.init_from`` (fine-tuning a model of other classes, :mod:`mit_semseg.models.init_from`)
is fetched and checked then too. Writes to cfg.DIR: config.yaml, object_info.csv (the classes'
names and colours, so the run folder names its classes), log.txt,
{encoder,decoder,history}_epoch_N.pth, checkpoint_last.pth and training_curves.png; holds a
lock on DIR/train.lock while it runs (:mod:`mit_semseg.cli.run_dir`). A fresh start in a DIR
that holds an earlier run is refused unless ``--overwrite`` (which moves that run's files
aside). SIGINT or SIGTERM stops it after the current step with checkpoint_last.pth written
(exit status 130 or 143). Under ``torchrun --max-restarts`` restarted workers resume by
themselves from a checkpoint their own job wrote. Exit status:
0 when training finished, 1 when it stopped part-way on a write error (e.g. the disk filled
up; resume with ``--resume auto``), 2 on a setup error. See docs/training.md and
docs/parallel.md.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import logging
import os
import socket
from typing import Any

import torch

from mit_semseg.cli import common, preflight
from mit_semseg.cli.devices import NotSupportedCliException, bind_cuda_device, resolve_devices
from mit_semseg.cli.launch import interrupted
from mit_semseg.cli.run_dir import (
    claim_run_dir,
    find_resume_state,
    job_identity,
    lock_run_dir,
    open_run_dir,
)
from mit_semseg.config import load_config
from mit_semseg.data import TrainDataset, build_train_loader
from mit_semseg.data.loader import (
    device_batches,
    global_device_indices,
    seed_cuda_generators,
    seed_everything,
)
from mit_semseg.data.palette import dataset_classes
from mit_semseg.download import DownloadError
from mit_semseg.engine import checkpoint as ckpt
from mit_semseg.engine.distributed import DistContext, cleanup_distributed, init_distributed
from mit_semseg.engine.optim import PolySchedule, build_optimizers
from mit_semseg.engine.reproducibility import configure_determinism
from mit_semseg.engine.run_control import RunControl, SignalWatch, TrainingInterrupted
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
from mit_semseg.models import build_segmentation_model
from mit_semseg.models.init_from import InitSource, find_source, initialise_from
from mit_semseg.nn.host_allocator import keep_freed_memory
from mit_semseg.nn.precision import check_amp, grad_scaler
from mit_semseg.viz import plot_training_curves

PROG = "train.py"
# writing an output failed: the disk or quota is full, the folder became read-only or broke
# (EFBIG: a file reached the file system's or the process' size limit, ulimit -f)
_WRITE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS, errno.EACCES,
                 errno.EPERM, errno.EIO, errno.EFBIG}
logger = logging.getLogger("train")

EXAMPLES = (
    "{prog} --cfg ade20k-resnet50dilated-ppm_deepsup --gpus 0-3 DIR ckpt/my_run",
    "{prog} --cfg synthetic-mobilenetv2dilated-c1_deepsup --gpus cpu TRAIN.num_epoch 2",
    "{prog} --cfg my_config.yaml --gpus cpu --resume auto   # continue a stopped run",
)


def parse_args(argv: list[str] | None = None, prog: str = PROG) -> argparse.Namespace:
    parser = common.script_parser(
        prog, "Train a semantic segmentation network on DATASET.list_train; checkpoints,\n"
        "log and training curves go to DIR. Under torchrun, one process per device.",
        devices_help='devices: "0-3", "gpu0,gpu2", "cpu", "cpux2" (2 CPU replicas)',
        examples=EXAMPLES)
    parser.add_argument("--resume", default=None, metavar="PATH|auto",
                        help="continue from a checkpoint_last.pth ('auto': the one in DIR, "
                             "if any; default: TRAIN.resume, itself empty = start afresh)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume even though keys that change what is trained (learning "
                             "rates, schedule, batch, model, data sizes, devices) differ from "
                             "the checkpoint's config")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a DIR that holds an earlier run, whose files are "
                             "moved into DIR/previous-<date>-<time>/ (never deleted)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    prog = common.program_name(PROG) if argv is None else PROG
    with contextlib.ExitStack() as held:
        try:
            args = parse_args(argv, prog)
            cfg, dist_ctx, devices = setup(args)
            held.enter_context(lock_run_dir(cfg.DIR, dist_ctx))
            resume = find_resume_state(cfg, dist_ctx, len(devices), args.allow_config_change,
                                       job_identity(cfg.dump(), dist_ctx.run_id))
            claim_run_dir(cfg.DIR, dist_ctx, resume[0] if resume else None,
                          cfg.TRAIN.start_epoch, args.overwrite)
            if resume is not None:
                preflight.check_resume_state(cfg, resume[1], resume[0])
            init_source = None if resume is not None else fetch_init_source(cfg, dist_ctx)
            open_run_dir(cfg, args.cfg, dist_ctx)
            configure_determinism(cfg.TRAIN.deterministic)  # before anything can start cuBLAS
            keep_freed_memory()  # each step reuses the last one's pages (CPU training)
            state = build_state(cfg, dist_ctx, devices, resume, init_source)
        except common.SETUP_ERRORS as exc:
            cleanup_distributed(wait_for_peers=False)
            return common.usage_error(prog, exc)
        except KeyboardInterrupt:  # Ctrl-C before the loop, which handles signals itself
            return interrupted(prog, " before training started; nothing to save")
        try:
            code = train(cfg, state, len(devices))
        except KeyboardInterrupt:  # just before or after the loop: nothing left to save
            return interrupted(prog)
        except OSError as exc:
            if exc.errno not in _WRITE_ERRNOS:
                raise
            # the checkpoint files are written atomically: the last complete one can be resumed
            where = f" ({exc.filename})" if exc.filename else ""
            common.print_error(prog, f"cannot write to DIR {cfg.DIR}{where}: {exc.strerror}; "
                                     f"training stopped at iteration {state.iteration}; make "
                                     "room or fix the folder, then continue with --resume auto")
            cleanup_distributed(wait_for_peers=False)
            return common.EXIT_SOME_FAILED
    cleanup_distributed()
    return code


def setup(args: argparse.Namespace) -> tuple[Any, DistContext, list[torch.device]]:
    """Config, devices, process group and console logging (nothing is written to DIR)."""
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
    bind_cuda_device(devices[0])
    common.setup_logging(None, dist_ctx.rank)  # the console, until DIR is known to be usable
    preflight.check_training(cfg, len(devices), dist_ctx.world_size)
    return cfg, dist_ctx, devices


def fetch_init_source(cfg: Any, dist_ctx: DistContext) -> InitSource | None:
    """The model ``MODEL.init_from`` names, fetched and checked against the configured model;
    None when the run does not start from one (no key, or ``TRAIN.start_epoch`` > 0).

    Raises:
        SetupError: no such folder or model, or it does not fit; naming ``MODEL.init_from``.
        mit_semseg.download.DownloadError: fetching failed.
    """
    spec = cfg.MODEL.init_from
    if not spec or cfg.TRAIN.start_epoch > 0:
        return None
    try:
        source = find_source(spec, progress=dist_ctx.is_main)
    except (FileNotFoundError, ValueError) as error:
        raise preflight.SetupError(f"MODEL.init_from {error}") from None
    except DownloadError as error:
        raise DownloadError(f"MODEL.init_from {error}") from None
    preflight.check_init_source(cfg, source)
    return source


def build_module(cfg: Any, num_devices: int, saved: dict | None,
                 init_source: InitSource | None = None) -> torch.nn.Module:
    """The training module, with the weights to start from.

    Those are, by priority: the resumed state, the original-style ``TRAIN.start_epoch``
    checkpoint, ``MODEL.weights_*`` files, ``init_source`` (``MODEL.init_from``, see
    :func:`fetch_init_source`), ImageNet (``TRAIN.pretrained``) or random.
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
    starts_from_source = saved is None and init_source is not None
    module = build_segmentation_model(
        cfg.MODEL.arch_encoder, cfg.MODEL.arch_decoder, cfg.DATASET.num_class,
        fc_dim=cfg.MODEL.fc_dim,
        pretrained=cfg.TRAIN.pretrained and saved is None and not starts_from_source,
        deep_sup_scale=cfg.TRAIN.deep_sup_scale, factored_heads=cfg.TRAIN.factored_heads,
        norm_layer=norm_layer_for(num_devices, cfg.DIST.sync_bn),
        class_weights=tuple(float(w) for w in cfg.TRAIN.class_weights), **weights)
    if saved is not None:
        module.encoder.load_state_dict(saved["encoder"])
        module.decoder.load_state_dict(saved["decoder"])
    elif starts_from_source:
        classes = dataset_classes(cfg.DATASET.num_class, cfg.DATASET.root_dataset)
        initialise_from(module, init_source, classes.synonyms)
    for part, momentum in bn_momentum_by_part(cfg.TRAIN.bn_momentum,
                                              cfg.MODEL.arch_encoder).items():
        set_bn_momentum(getattr(module, part), momentum)
    return module


def build_state(cfg: Any, dist_ctx: DistContext, devices: list[torch.device],
                resume: tuple[str, dict] | None,
                init_source: InitSource | None = None) -> TrainState:
    """The run's state, continued from ``resume`` (see :func:`find_resume_state`) if given,
    else started from ``init_source`` if given (see :func:`build_module`)."""
    t = cfg.TRAIN
    resume_path, saved = resume if resume is not None else (None, None)
    seed_everything(t.seed)  # identical initial weights on every rank
    module, scattered = parallelize(build_module(cfg, len(devices), saved, init_source),
                                    devices, dist_ctx, cfg.DIST.sync_bn)
    net = ckpt.unwrap_model(module)
    state = TrainState(
        module=module,
        optimizers=build_optimizers(net.encoder, net.decoder, lr_encoder=t.lr_encoder,
                                    lr_decoder=t.lr_decoder, momentum=t.beta1,
                                    weight_decay=t.weight_decay),
        schedule=PolySchedule({"encoder": t.lr_encoder, "decoder": t.lr_decoder},
                              t.epoch_iters * t.num_epoch, t.lr_pow,
                              frozen_until={"encoder": t.freeze_encoder_iters}),
        scaler=grad_scaler(devices[0], t.amp), epoch_iters=t.epoch_iters, device=devices[0],
        scattered=scattered, amp=t.amp, fix_bn=t.fix_bn, disp_iter=t.disp_iter,
        dist_ctx=dist_ctx, max_nonfinite_steps=t.max_nonfinite_steps,
        iteration=t.start_epoch * t.epoch_iters)
    seed_everything(t.seed + dist_ctx.rank)  # ranks draw different dropout masks
    # and so does every GPU; a resumed run then restores all of these generators
    seed_cuda_generators(t.seed, devices, global_device_indices(dist_ctx.rank, len(devices)))
    if saved is not None:
        restore_training_state(state, saved, resume_path)
    return state


def open_stream(cfg: Any, workers: int, pin_memory: bool, seed: int, local_index: int,
                start_step: int) -> torch.utils.data.DataLoader:
    """One device's training loader (see :func:`mit_semseg.data.loader.device_batches`)."""
    dataset = TrainDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_train, cfg.DATASET,
                           batch_per_gpu=cfg.TRAIN.batch_size_per_gpu,
                           skip_bad_samples=cfg.TRAIN.skip_bad_samples)
    return build_train_loader(dataset, num_devices=1, workers=workers, seed=seed,
                              start_iter=start_step, num_steps=cfg.TRAIN.epoch_iters,
                              pin_memory=pin_memory)


def finish_epoch(cfg: Any, state: TrainState, control: RunControl) -> None:
    """The epoch's files (rank 0), then the resumable state (all ranks)."""
    if state.dist_ctx.is_main:
        net = state.net
        ckpt.save_epoch_checkpoint(cfg.DIR, state.epoch, net.encoder, net.decoder, state.history)
        plot_training_curves(state.history, os.path.join(cfg.DIR, "training_curves.png"))
    control.save(state)


def _span(numbers: list[int]) -> str:
    """``"8-15"`` for consecutive numbers, else ``"1, 3"``."""
    if len(numbers) > 1 and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{numbers[0]}-{numbers[-1]}"
    return ", ".join(map(str, numbers))


def log_layout(cfg: Any, state: TrainState, num_devices: int) -> None:
    """Where the ranks run, and the recipe arithmetic (see docs/parallel.md)."""
    ctx, t = state.dist_ctx, cfg.TRAIN
    nodes: dict[tuple[int, str], list[int]] = {}
    for rank, node in enumerate(ctx.gather((ctx.node_rank, socket.gethostname()))):
        nodes.setdefault(node, []).append(rank)
    logger.info("World size %d on %d node(s): %s; %d %s device(s) per process", ctx.world_size,
                len(nodes), "; ".join(f"node {n} ({host}) rank {_span(ranks)}"
                                      for (n, host), ranks in sorted(nodes.items())),
                num_devices, state.device.type)
    total = num_devices * ctx.world_size
    logger.info("1 Epoch = %d iters; effective batch %d = %d device(s) x %d images per device",
                t.epoch_iters, total * t.batch_size_per_gpu, total, t.batch_size_per_gpu)


def run_epoch(cfg: Any, state: TrainState, control: RunControl,
              make_loader: functools.partial, device_indices: list[int]) -> None:
    """Train the rest of the current epoch, then write its files and the resumable state.

    Raises:
        TrainingInterrupted: a signal stopped the run (the state is saved; at the epoch's last
            step its files are written first).
    """
    t = cfg.TRAIN
    batches = device_batches(make_loader, t.seed, device_indices, state.epoch,
                             state.iteration % t.epoch_iters)
    # closed on every way out: the loader workers ignore SIGTERM (see
    # mit_semseg.data.loader.worker_init_fn), so they must be shut down, not left to exit
    with contextlib.closing(batches):
        try:
            train_one_epoch(state, batches, on_step=control, progress=state.dist_ctx.is_main)
        except TrainingInterrupted:
            if state.iteration % t.epoch_iters == 0:  # it was the epoch's last step
                finish_epoch(cfg, state, control)
            raise
    finish_epoch(cfg, state, control)


def train(cfg: Any, state: TrainState, num_devices: int) -> int:
    """Train until ``TRAIN.num_epoch``, writing the epoch files and the resumable state.

    Returns:
        The exit status: 0, or 128 + the number of the signal that stopped the run.
    """
    t = cfg.TRAIN
    config, world_size = cfg.dump(), state.dist_ctx.world_size
    stamp = ckpt.RunStamp(world_size, num_devices * world_size, config,
                          job_identity(config, state.dist_ctx.run_id))
    last = ResumableCheckpoint(os.path.join(cfg.DIR, ckpt.LAST_CHECKPOINT), t.checkpoint_every,
                               stamp)
    # TRAIN.workers is shared by this process' devices
    make_loader = functools.partial(open_stream, cfg, -(-t.workers // num_devices),
                                    state.device.type == "cuda")
    device_indices = global_device_indices(state.dist_ctx.rank, num_devices)
    log_layout(cfg, state, num_devices)
    with SignalWatch() as signals:
        control = RunControl(last, signals, every_seconds=60 * t.checkpoint_minutes)
        try:
            while state.epoch < t.num_epoch:
                run_epoch(cfg, state, control, make_loader, device_indices)
        except TrainingInterrupted as stop:
            if state.dist_ctx.is_main:
                logger.warning("Training %s; %s holds the state: to continue, run the same "
                               "command with TRAIN.resume auto appended", stop, last.path)
            return stop.exit_code
    logger.info("Training Done!")
    return 0
