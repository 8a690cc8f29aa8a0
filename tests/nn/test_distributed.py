"""DistributedSyncBatchNorm with 2 gloo processes on 127.0.0.1, and without a process group."""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from mit_semseg.nn import (
    DistributedSyncBatchNorm,
    SynchronizedBatchNorm2d,
    convert_sync_batchnorm,
    revert_sync_batchnorm,
)

from . import _dist_worker
from ._helpers import NoHostTransfers, assert_close, randomize_bn, run_step

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed unavailable"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(120)
def test_two_gloo_ranks_equal_full_batch_batchnorm():
    """Even/uneven/empty/one-sample splits, BN1d/2d/3d, 5 DDP SGD steps, eval w/o collectives."""
    start = time.monotonic()
    mp.spawn(_dist_worker.run_checks, args=(2, _free_port()), nprocs=2, join=True)
    assert time.monotonic() - start < 60


@pytest.mark.timeout(120)
def test_failing_rank_surfaces_instead_of_hanging():
    start = time.monotonic()
    with pytest.raises(mp.ProcessRaisedException, match="rank 1 fails on purpose"):
        mp.spawn(_dist_worker.fail_on_rank_one, args=(2, _free_port()), nprocs=2, join=True)
    assert time.monotonic() - start < 60


def test_without_process_group_behaves_as_batchnorm():
    plain = nn.BatchNorm2d(5)
    randomize_bn(plain)
    sync = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(5)))[0]
    sync.load_state_dict(plain.state_dict())
    for _ in range(2):
        x, g = torch.randn(4, 5, 3, 3) * 2, torch.randn(4, 5, 3, 3)
        out_p, dx_p = run_step(plain, x, g)
        out_s, dx_s = run_step(sync, x, g)
        assert_close(out_s, out_p, "output")
        assert_close(dx_s, dx_p, "input grad")
    assert_close(sync.running_var, plain.running_var, "running_var")
    assert int(sync.num_batches_tracked) == 2


def test_convert_and_revert_share_state_and_keys():
    net = nn.Sequential(nn.Conv1d(2, 3, 1), nn.BatchNorm1d(3), nn.Sequential(
        SynchronizedBatchNorm2d(3), nn.BatchNorm3d(3, affine=False)))
    keys = list(net.state_dict())
    weight = net[1].weight
    converted = convert_sync_batchnorm(net)
    kinds = [type(m) for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert kinds == [DistributedSyncBatchNorm] * 3
    assert not issubclass(DistributedSyncBatchNorm, nn.SyncBatchNorm)  # DDP accepts it on CPU
    assert converted[1].weight is weight and list(converted.state_dict()) == keys
    reverted = revert_sync_batchnorm(converted)
    kinds = [type(m) for m in reverted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert kinds == [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d]
    assert reverted[1].weight is weight and reverted[2][1].affine is False
    assert list(reverted.state_dict()) == keys


class _TwoEqualRanks:
    """A fake 2-rank process group in which rank 1 holds the same batch as this rank (0)."""

    def __init__(self, monkeypatch):
        dist = torch.distributed
        for name, value in (("is_available", lambda: True), ("is_initialized", lambda: True),
                            ("get_world_size", lambda group=None: 2),
                            ("get_rank", lambda group=None: 0),
                            ("all_gather", self.all_gather), ("all_reduce", self.all_reduce)):
            monkeypatch.setattr(dist, name, value)

    @staticmethod
    def all_gather(parts, local, group=None):
        for part in parts:
            part.copy_(local)

    @staticmethod
    def all_reduce(tensor, op=None, group=None):
        tensor.mul_(2)


def test_synced_batchnorm_reads_nothing_back_to_the_host(monkeypatch):
    """Issue 17.5: with more than one value per channel, a DistributedSyncBatchNorm forward and
    backward over 2 ranks never moves a value between host and device; the result is plain
    BatchNorm over both ranks' batches."""
    plain = nn.BatchNorm2d(4)
    randomize_bn(plain)
    sync = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4)))[0]
    sync.load_state_dict(plain.state_dict())
    gen = torch.Generator().manual_seed(3)
    x, g = torch.randn(3, 4, 5, 5, generator=gen) * 2 + 1, torch.randn(3, 4, 5, 5, generator=gen)
    ref_out, ref_dx = run_step(plain, torch.cat([x, x]), torch.cat([g, g]))
    _TwoEqualRanks(monkeypatch)
    spy = NoHostTransfers(monkeypatch)
    out, dx = run_step(sync, x, g)
    assert spy.calls == []
    monkeypatch.undo()
    assert_close(out, ref_out[:3], "output")
    assert_close(dx, ref_dx[:3], "input grad")
    assert_close(sync.running_var, plain.running_var, "running_var")
    # this rank's share; DDP's all_reduce of parameter gradients adds rank 1's equal one
    assert_close(2 * sync.weight.grad, plain.weight.grad, "weight grad")


@pytest.mark.cuda
def test_synced_batchnorm_never_synchronises_the_gpu_cuda(monkeypatch):
    """The same on cuda:0, checked by CUDA itself: any synchronising call raises."""
    sync = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(4)))[0].cuda()
    x = torch.randn(3, 4, 5, 5, device="cuda", requires_grad=True)
    _TwoEqualRanks(monkeypatch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sync(x).square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x.grad).all()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_ddp_synced_batchnorm_world_size_one_under_autocast_cuda(dtype, tol, channels_last):
    """DDP with DistributedSyncBatchNorm on cuda:0 (a one-rank nccl group) == nn.BatchNorm2d."""
    import copy
    import datetime

    from torch.nn.parallel import DistributedDataParallel as DDP

    backend = "nccl" if torch.distributed.is_nccl_available() else "gloo"
    torch.distributed.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
        timeout=datetime.timedelta(seconds=60))
    try:
        plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)).cuda()
        randomize_bn(plain[1])
        ddp = DDP(convert_sync_batchnorm(copy.deepcopy(plain)), device_ids=[0])
        x = torch.randn(4, 3, 10, 10, device="cuda") * 2 + 0.5
        if channels_last:
            plain, ddp = (m.to(memory_format=torch.channels_last) for m in (plain, ddp))
            x = x.contiguous(memory_format=torch.channels_last)
        g = torch.randn(4, 8, 10, 10, device="cuda")
        with torch.autocast("cuda", dtype=dtype):
            out_p, dx_p = run_step(plain, x, g)
            out_s, dx_s = run_step(ddp, x, g)
        assert out_s.dtype == out_p.dtype == dtype
        if channels_last:
            assert out_s.is_contiguous(memory_format=torch.channels_last)
        assert_close(out_s.float(), out_p.float(), "output", atol=tol, rtol=0)
        assert_close(dx_s.float(), dx_p.float(), "input grad", atol=tol, rtol=0)
        synced = ddp.module[1]
        assert isinstance(synced, DistributedSyncBatchNorm)
        assert_close(synced.running_var, plain[1].running_var, "running_var", atol=1e-3)
        assert_close(synced.weight.grad, plain[1].weight.grad, "weight grad", atol=tol * 50)
    finally:
        torch.distributed.destroy_process_group()
