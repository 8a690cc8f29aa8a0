"""Replication callbacks, CPU replicas and the threaded parallel_apply."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mit_semseg.nn import (
    DataParallelWithCallback,
    SynchronizedBatchNorm2d,
    execute_replication_callbacks,
    patch_replication_callback,
)
from mit_semseg.nn.replicate import parallel_apply, replicate_on_cpu
from mit_semseg.nn.scatter_gather import split_batch

from ._helpers import assert_close, randomize_bn, run_step


def _net():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), SynchronizedBatchNorm2d(4, eps_mode="plus"))
    randomize_bn(net[1])
    return net


def test_cpu_replicas_share_parameters_and_only_copy_zero_shares_buffers():
    net = _net()
    replicas = replicate_on_cpu(net, 3)
    for replica in replicas:
        assert replica is not net and replica[0] is not net[0]
        assert replica[0].weight is net[0].weight  # gradients accumulate in the original
    assert replicas[0][1].running_mean is net[1].running_mean
    assert replicas[1][1].running_mean is not net[1].running_mean
    assert torch.equal(replicas[1][1].running_mean, net[1].running_mean)
    assert list(replicas[2].state_dict()) == list(net.state_dict())


def test_callbacks_receive_one_context_per_position_master_first():
    calls = []

    class Probe(nn.Module):
        def __data_parallel_replicate__(self, ctx, copy_id):
            calls.append((id(ctx), copy_id))

    net = nn.Sequential(Probe(), nn.Sequential(Probe()))
    contexts = execute_replication_callbacks(replicate_on_cpu(net, 3))
    assert len(contexts) == len(list(net.modules()))
    first, second = id(contexts[1]), id(contexts[3])
    assert calls == [(first, 0), (second, 0), (first, 1), (second, 1), (first, 2), (second, 2)]


class _CpuDataParallel(nn.DataParallel):
    """A plain nn.DataParallel subclass with a CPU forward that uses replicate/parallel_apply."""

    def __init__(self, module, k):
        nn.Module.__init__(self)
        self.module, self.k, self.device_ids = module, k, []

    def replicate(self, module, device_ids):
        return replicate_on_cpu(module, len(device_ids))

    def parallel_apply(self, replicas, inputs, kwargs):
        return [r(*i, **kw) for r, i, kw in zip(replicas, inputs, kwargs)]

    def forward(self, x):
        inputs, kwargs = split_batch((x,), {}, self.k)
        replicas = self.replicate(self.module, list(range(len(inputs))))
        return torch.cat(self.parallel_apply(replicas, inputs, kwargs))


def test_patch_replication_callback_equals_data_parallel_with_callback():
    x, g = torch.randn(6, 3, 5, 5), torch.randn(6, 4, 3, 3)
    reference, patched, unpatched = _net(), _net(), _net()
    patched.load_state_dict(reference.state_dict())
    unpatched.load_state_dict(reference.state_dict())
    out_r, dx_r = run_step(DataParallelWithCallback(reference, num_cpu_replicas=2), x, g)
    wrapper = _CpuDataParallel(patched, 2)
    patch_replication_callback(wrapper)
    out_p, dx_p = run_step(wrapper, x, g)
    assert_close(out_p, out_r, "output")
    assert_close(dx_p, dx_r, "input grad")
    assert_close(patched[1].running_var, reference[1].running_var, "running_var")
    # Without the patch each replica normalises with its own half: clearly different.
    out_u, _ = run_step(_CpuDataParallel(unpatched, 2), x, g)
    assert (out_u - out_r).abs().max() > 1e-3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only fallback")
def test_without_gpu_and_cpu_replicas_it_is_a_pass_through():
    net = _net()
    model = DataParallelWithCallback(net, device_ids=[0, 1])
    assert model.device_ids == []
    x = torch.randn(4, 3, 5, 5)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))


def test_parallel_apply_propagates_grad_mode_and_reports_replica():
    class Check(nn.Module):
        def forward(self, x):
            if x.sum() < -1e5:
                raise KeyError("bad chunk")
            return torch.tensor(float(torch.is_grad_enabled()))

    mods = [Check(), Check()]
    with torch.no_grad():
        assert parallel_apply(mods, [(torch.ones(1),), (torch.ones(1),)]) == [0.0, 0.0]
    assert parallel_apply(mods, [(torch.ones(1),), (torch.ones(1),)]) == [1.0, 1.0]
    with pytest.raises(KeyError, match="bad chunk") as info:
        parallel_apply(mods, [(torch.ones(1),), (torch.full((1,), -1e6),)])
    assert "replica 1" in "".join(getattr(info.value, "__notes__", ["replica 1"]))


class _FakeCudaStreams:
    """torch.cuda's device/stream context managers on a CPU machine: records, per thread,
    which stream was current and which stream each replica thread ran under."""

    def __init__(self, monkeypatch):
        import contextlib
        import threading

        self.queried, self.entered = [], {}
        self._thread = threading.get_ident
        caller_streams = {0: "caller stream of cuda:0", 1: "caller stream of cuda:1"}

        def current_stream(device=None):
            self.queried.append(self._thread())
            # a new thread's current stream is the default stream
            return caller_streams[device.index] if self.queried[-1] == self.main else "default"

        @contextlib.contextmanager
        def stream(s):
            self.entered[self._thread()] = s
            yield

        self.main = self._thread()
        monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
        monkeypatch.setattr(torch.cuda, "stream", stream)
        monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())


def test_replica_threads_run_on_the_callers_streams(monkeypatch):
    """Issue 17.8: the inputs were copied in order with the caller's current stream of each
    device, so each replica must run on that stream, not on its thread's default stream."""
    streams = _FakeCudaStreams(monkeypatch)

    class Where(nn.Module):
        def forward(self, x):
            import threading
            return streams.entered.get(threading.get_ident())

    assert parallel_apply([Where(), Where()], [(torch.ones(1),), (torch.ones(1),)],
                          devices=[0, 1]) == ["caller stream of cuda:0", "caller stream of cuda:1"]
    assert set(streams.queried) == {streams.main}


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_cpu_replicas must be >= 1"):
        DataParallelWithCallback(_net(), num_cpu_replicas=0)
    with pytest.raises(ValueError, match="not both"):
        DataParallelWithCallback(_net(), device_ids=[0], num_cpu_replicas=2)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_equal_full_batch_batchnorm():
    plain = nn.BatchNorm2d(4).cuda()
    randomize_bn(plain)
    sync = SynchronizedBatchNorm2d(4, eps_mode="plus").cuda()
    sync.load_state_dict(plain.state_dict())
    x, g = torch.randn(8, 4, 5, 5).cuda(), torch.randn(8, 4, 5, 5).cuda()
    out_p, dx_p = run_step(plain, x, g)
    out_s, dx_s = run_step(DataParallelWithCallback(sync, device_ids=[0, 1]), x, g)
    assert_close(out_s.cpu(), out_p.cpu(), "output")
    assert_close(dx_s.cpu(), dx_p.cpu(), "input grad")
    assert_close(sync.running_var.cpu(), plain.running_var.cpu(), "running_var")
