"""TRAIN.bn_momentum reaches every BatchNorm of train.py's module in every launch mode.

One device (plain BatchNorm), one process with two CPU replicas (synchronised BatchNorm and
the dict-scattering DataParallel) and two gloo processes (DDP + distributed synchronised
BatchNorm): each layer has the configured momentum, and one training forward moves its
running statistics by exactly that fraction (checks in ``_bn_momentum.py``).
"""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from _bn_momentum import batches, check_running_statistics, ddp_rank, train_config
from eval_fixtures import REPO_ROOT

from mit_semseg.cli.train import build_state
from mit_semseg.config import ConfigError
from mit_semseg.engine.distributed import DistContext

CPU = torch.device("cpu")
MOMENTUM = 0.25  # neither PyTorch's default nor the original's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_device():
    state = build_state(train_config(REPO_ROOT, str(MOMENTUM)), DistContext(), [CPU], None)
    assert not state.scattered
    assert check_running_statistics(state, batches([(48, 64)]), MOMENTUM) > 50


def test_one_process_two_cpu_replicas():
    state = build_state(train_config(REPO_ROOT, str(MOMENTUM)), DistContext(), [CPU, CPU], None)
    assert state.scattered
    names = {type(m).__name__ for m in state.net.modules()}
    assert "SynchronizedBatchNorm2d" in names and "BatchNorm2d" not in names
    check_running_statistics(state, batches([(48, 64), (56, 40)]), MOMENTUM)


@pytest.mark.slow
def test_torchrun_two_processes():
    mp.spawn(ddp_rank, args=(2, _free_port(), str(REPO_ROOT), MOMENTUM), nprocs=2, join=True)


def test_the_originals_values_with_one_override():
    # -1: the original's 0.001 (its SyncBN default) for MobileNetV2 and the C1 decoder
    state = build_state(train_config(REPO_ROOT, "-1"), DistContext(), [CPU], None)
    check_running_statistics(state, batches([(48, 64)]), 0.001)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.5"])
def test_out_of_range_momentum_is_a_config_error(value):
    with pytest.raises(ConfigError, match="TRAIN.bn_momentum"):
        train_config(REPO_ROOT, value)
