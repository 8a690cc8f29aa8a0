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
from ._helpers import assert_close, randomize_bn, run_step

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
