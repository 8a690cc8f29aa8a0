"""Run inside the 2-process gloo job of test_factored.py (one call per rank): both forms of
the heads trained under DDP with synced BatchNorm, as ``torchrun train.py`` trains them."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from mit_semseg.engine.distributed import cleanup_distributed
from mit_semseg.nn import convert_sync_batchnorm

from .factored_training import compare_training, make_batches, make_forms


def run_checks(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        for encoder, decoder in (("resnet18dilated", "ppm_deepsup"), ("resnet18", "upernet_lite")):
            plain, factored = (convert_sync_batchnorm(m) for m in make_forms(encoder, decoder))
            # every rank its own images (make_forms seeds the same weights on every rank)
            batches = make_batches(plain, 3, torch.float64, seed=1 + rank)
            # the stand-in maps the decoder does not read have no gradient
            compare_training(plain, factored, batches, torch.float64,
                             wrap=lambda m: DDP(m, find_unused_parameters=True))
        cleanup_distributed()
    finally:
        if dist.is_initialized():  # a check failed: no barrier, the other rank may be gone
            dist.destroy_process_group()
