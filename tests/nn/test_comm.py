"""The rendezvous never hangs: failures, divergent call counts and timeouts all raise."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from mit_semseg.nn import DataParallelWithCallback, SyncError, SynchronizedBatchNorm2d
from mit_semseg.nn.comm import SyncMaster


class FailsOnReplica(nn.Module):
    """Conv + SyncBN + SyncBN, where the replica holding the poisoned chunk raises in between."""

    def __init__(self):
        super().__init__()
        self.bn1 = SynchronizedBatchNorm2d(3)
        self.bn2 = SynchronizedBatchNorm2d(3)

    def forward(self, x):
        y = self.bn1(x)
        if torch.isnan(x).any():
            time.sleep(0.2)  # let the healthy replicas reach bn2 and block there first
            raise FloatingPointError("poisoned input")
        return self.bn2(y)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("bad_replica", [0, 2])
def test_failing_replica_makes_all_others_raise_promptly(bad_replica):
    x = torch.randn(6, 3, 4, 4)
    x[2 * bad_replica] = float("nan")  # chunks of 2 with k=3
    model = DataParallelWithCallback(FailsOnReplica(), num_cpu_replicas=3)
    start = time.monotonic()
    with pytest.raises(FloatingPointError, match="poisoned input"):
        model(x)
    assert time.monotonic() - start < 10.0
    assert threading.active_count() < 10  # every replica thread ended


@pytest.mark.timeout(30)
def test_divergent_number_of_calls_is_detected():
    class SkipsOnReplica1(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = SynchronizedBatchNorm2d(3)

        def forward(self, x):
            if x[0, 0, 0, 0] > 1e3:  # marker row: this replica skips the layer
                return x
            return self.bn(x)

    x = torch.randn(4, 3, 2, 2)
    x[2, 0, 0, 0] = 1e4
    start = time.monotonic()
    with pytest.raises(SyncError, match="same number of times"):
        DataParallelWithCallback(SkipsOnReplica1(), num_cpu_replicas=2)(x)
    assert time.monotonic() - start < 10.0


@pytest.mark.timeout(30)
def test_error_in_master_callback_reaches_every_replica():
    def broken(_messages):
        raise ArithmeticError("reduction failed")

    master = SyncMaster(broken, timeout=20)
    pipes = [master.register_slave(i) for i in (1, 2)]
    errors = {}

    def slave(pipe):
        try:
            pipe.run_slave("msg")
        except SyncError as exc:
            errors[pipe.identifier] = exc

    threads = [threading.Thread(target=slave, args=(p,)) for p in pipes]
    for t in threads:
        t.start()
    start = time.monotonic()
    with pytest.raises(ArithmeticError):
        master.run_master("msg")
    for t in threads:
        t.join(10)
    assert time.monotonic() - start < 10.0
    assert set(errors) == {1, 2}
    assert all("reduction failed" in str(e) for e in errors.values())


@pytest.mark.timeout(30)
def test_missing_peer_times_out():
    master = SyncMaster(lambda msgs: msgs, timeout=0.3)
    master.register_slave(1)  # never shows up
    start = time.monotonic()
    with pytest.raises(SyncError, match=r"gave up after 0.3 s"):
        master.run_master("x")
    assert time.monotonic() - start < 5.0


def test_rounds_deliver_each_replica_its_own_result():
    master = SyncMaster(lambda msgs: [(i, m * 10 + i) for i, m in msgs], timeout=10)
    pipes = [master.register_slave(i) for i in (1, 2, 3)]
    got = {}

    def slave(pipe):
        got[pipe.identifier] = [pipe.run_slave(r) for r in range(3)]

    threads = [threading.Thread(target=slave, args=(p,)) for p in pipes]
    for t in threads:
        t.start()
    mine = [master.run_master(r) for r in range(3)]
    for t in threads:
        t.join(10)
    assert mine == [0, 10, 20]
    assert got == {i: [i, 10 + i, 20 + i] for i in (1, 2, 3)}


def test_register_slave_rejects_bad_ids():
    master = SyncMaster(lambda msgs: msgs)
    master.register_slave(1)
    with pytest.raises(ValueError, match="already registered"):
        master.register_slave(1)
    with pytest.raises(ValueError, match="start at 1"):
        master.register_slave(0)
