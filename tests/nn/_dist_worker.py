"""Code run inside the 2-process gloo jobs of test_distributed.py (one call per rank).

Each rank checks its results against a single-process computation on the full batch and
raises on any mismatch; ``torch.multiprocessing.spawn`` turns that into a test failure.
"""

from __future__ import annotations

import copy
import datetime

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from mit_semseg.engine.distributed import cleanup_distributed
from mit_semseg.nn import (
    DistributedSyncBatchNorm,
    UserScatteredDataParallel,
    convert_model,
    convert_sync_batchnorm,
)

from ._helpers import assert_close, randomize_bn


def _init(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )


def _gather_cat(t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's ``t`` (first dims given by ``sizes``) along dim 0."""
    width = max(sizes)
    padded = torch.zeros((width,) + tuple(t.shape[1:]), dtype=t.dtype)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


def _bn_split_check(rank: int, shape: tuple, sizes: list[int], bn_cls: type) -> None:
    """Bare DistributedSyncBatchNorm on a split batch == plain BN on the full batch."""
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(shape, generator=gen) * 2 + 0.5
    g = torch.randn(shape, generator=gen)
    plain = bn_cls(shape[1])
    randomize_bn(plain)
    sync = convert_sync_batchnorm(copy.deepcopy(plain))
    assert isinstance(sync, DistributedSyncBatchNorm)
    lo = sum(sizes[:rank])
    xr = x[lo: lo + sizes[rank]].clone().requires_grad_(True)
    out = sync(xr)
    (out * g[lo: lo + sizes[rank]]).sum().backward()
    xf = x.clone().requires_grad_(True)
    ref = plain(xf)
    (ref * g).sum().backward()
    assert xr.grad.shape == xr.shape
    assert_close(_gather_cat(out.detach(), sizes), ref.detach(), f"output {sizes}")
    assert_close(_gather_cat(xr.grad, sizes), xf.grad, f"input grad {sizes}")
    for name in ("weight", "bias"):
        grad = getattr(sync, name).grad.clone()
        dist.all_reduce(grad)
        assert_close(grad, getattr(plain, name).grad, f"{name} grad {sizes}")
    assert_close(sync.running_mean, plain.running_mean, "running_mean")
    assert_close(sync.running_var, plain.running_var, "running_var")


def _make_net() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4))
    randomize_bn(net[1], seed=2)
    randomize_bn(net[4], seed=3)
    return net


def _train(model: nn.Module, rank: int, world: int, split: bool) -> nn.Module:
    """5 SGD steps; with ``split`` each rank sees its part (5/3) of the 8-image batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sizes = [5, 3]
    lo, hi = (sum(sizes[:rank]), sum(sizes[: rank + 1])) if split else (0, 8)
    gen = torch.Generator().manual_seed(7)
    for _ in range(5):
        x = torch.randn(8, 3, 6, 6, generator=gen) + 1.0
        g = torch.randn(8, 4, 6, 6, generator=gen)
        opt.zero_grad()
        # DDP averages gradients over ranks; scaling by world gives the full-batch sum.
        scale = world if split else 1
        (model(x[lo:hi]) * g[lo:hi]).sum().div(8).mul(scale).backward()
        opt.step()
    return model.module if isinstance(model, DDP) else model


def _ddp_training_check(rank: int, world: int) -> None:
    """5 SGD steps under DDP (uneven 5/3 split) == single-process training on all 8 images."""
    torch.manual_seed(0)
    initial = _make_net()
    reference = _train(copy.deepcopy(initial), rank, world, split=False)
    synced = _train(DDP(convert_sync_batchnorm(copy.deepcopy(initial))), rank, world, True)
    unsynced = _train(DDP(copy.deepcopy(initial)), rank, world, split=True)
    worst_unsynced = 0.0
    for (name, p_ref), p, p_plain in zip(
        reference.named_parameters(), synced.parameters(), unsynced.parameters()
    ):
        assert_close(p.detach(), p_ref.detach(), f"parameter {name}", atol=1e-5, rtol=0)
        worst_unsynced = max(worst_unsynced, (p_plain - p_ref).abs().max().item())
    assert worst_unsynced > 1e-3, "control: per-rank BN statistics should change training"
    for (name, b_ref), b in zip(reference.named_buffers(), synced.buffers()):
        assert_close(b, b_ref, f"buffer {name}", atol=1e-5, rtol=0)
        others = [torch.empty_like(b) for _ in range(world)]
        dist.all_gather(others, b)
        assert all(torch.equal(o, others[0]) for o in others), f"{name} differs across ranks"


class _PerDeviceLoss(nn.Module):
    """``net`` plus a per-device loss, called with one batch dict as the training loop does."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: dict) -> torch.Tensor:
        return (self.net(batch["x"]) * batch["g"]).mean()


def _ddp_equals_one_process_replicas(rank: int, world: int) -> None:
    """DDP + DistributedSyncBatchNorm == one process with 2 CPU replicas + SynchronizedBatchNorm,
    bit for bit, over 5 SGD steps whose two devices get images of different sizes (the
    devices' statistics then carry different weights)."""
    torch.manual_seed(0)
    initial = _PerDeviceLoss(_make_net())
    gen = torch.Generator().manual_seed(11)
    steps = []
    for _ in range(5):
        steps.append([{"x": torch.randn(2, 3, h, w, generator=gen) * 2 + 1,
                       "g": torch.randn(2, 4, h, w, generator=gen)} for h, w in ((6, 6), (5, 7))])
    replicas = UserScatteredDataParallel(convert_model(copy.deepcopy(initial), eps_mode="plus"),
                                         num_cpu_replicas=2)
    ddp = DDP(convert_sync_batchnorm(copy.deepcopy(initial)))
    opt_replicas = torch.optim.SGD(replicas.parameters(), lr=0.5, momentum=0.9)
    opt_ddp = torch.optim.SGD(ddp.parameters(), lr=0.5, momentum=0.9)
    for batches in steps:
        for opt in (opt_replicas, opt_ddp):
            opt.zero_grad()
        replicas(batches).mean().backward()
        ddp(batches[rank]).backward()  # DDP averages the ranks' gradients
        opt_replicas.step()
        opt_ddp.step()
    for (name, a), b in zip(replicas.module.state_dict().items(),
                            ddp.module.state_dict().values()):
        assert torch.equal(a, b), f"{name}: max difference {(a - b).abs().max().item():.3g}"


def _eval_without_collectives(rank: int) -> None:
    """Eval mode on one rank only must not wait for the other rank."""
    bn = DistributedSyncBatchNorm(3).eval()
    if rank == 0:
        bn(torch.randn(2, 3, 4, 4))
    dist.barrier()


def run_checks(rank: int, world: int, port: int) -> None:
    _init(rank, world, port)
    try:
        _bn_split_check(rank, (8, 4, 5, 5), [4, 4], nn.BatchNorm2d)
        _bn_split_check(rank, (8, 4, 5, 5), [5, 3], nn.BatchNorm2d)
        _bn_split_check(rank, (4, 4, 3, 3), [4, 0], nn.BatchNorm2d)  # empty rank
        _bn_split_check(rank, (2, 6), [1, 1], nn.BatchNorm1d)  # one sample per rank
        _bn_split_check(rank, (6, 3, 2, 3, 3), [3, 3], nn.BatchNorm3d)
        _ddp_training_check(rank, world)
        _ddp_equals_one_process_replicas(rank, world)
        _eval_without_collectives(rank)
        cleanup_distributed()
    finally:
        if dist.is_initialized():  # a check failed: no barrier, the other rank may be gone
            dist.destroy_process_group()


def fail_on_rank_one(rank: int, world: int, port: int) -> None:
    _init(rank, world, port)
    bn = DistributedSyncBatchNorm(3)
    if rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    bn(torch.randn(4, 3, 2, 2))  # would wait for rank 1 forever without error handling
