"""SynchronizedBatchNorm{1,2,3}d against nn.BatchNorm on the full batch (CPU replicas)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from mit_semseg.nn import (
    DataParallelWithCallback,
    SynchronizedBatchNorm1d,
    SynchronizedBatchNorm2d,
    SynchronizedBatchNorm3d,
    convert_model,
)
from mit_semseg.nn.replicate import (
    execute_replication_callbacks,
    parallel_apply,
    replicate_on_cpu,
)
from mit_semseg.nn.sync_batchnorm import combine_moments, local_moments

from ._helpers import (
    ATOL,
    PLAIN_BN,
    NoHostTransfers,
    assert_close,
    compare_bn_state,
    randomize_bn,
    run_step,
    twin,
)

SYNC_BN = {1: SynchronizedBatchNorm1d, 2: SynchronizedBatchNorm2d, 3: SynchronizedBatchNorm3d}

# (dims of the BN class, input shape); std 2 keeps the variance far above eps.
SHAPES = [(1, (16, 10)), (1, (16, 10, 7)), (2, (16, 10, 6, 6)), (3, (8, 4, 3, 5, 5))]


def assert_same_step(reference, candidate, x, g, atol=ATOL):
    """One forward and backward of each on ``(x, g)``: equal outputs and input gradients."""
    out_r, dx_r = run_step(reference, x, g)
    out_c, dx_c = run_step(candidate, x, g)
    assert_close(out_c, out_r, "output", atol=atol)
    assert_close(dx_c, dx_r, "input grad", atol=atol)


def _data(shape, scale=2.0, offset=0.5):
    x = torch.randn(shape) * scale + offset
    return x, torch.randn(shape)


@pytest.mark.parametrize("dims,shape", SHAPES)
@pytest.mark.parametrize("eps_mode", ["plus", "clamp"])
def test_single_device_train_equals_batchnorm(dims, shape, eps_mode):
    plain = PLAIN_BN[dims](shape[1])
    randomize_bn(plain)
    sync = twin(SYNC_BN[dims], plain, eps_mode=eps_mode)
    for _ in range(2):
        x, g = _data(shape)
        assert_same_step(plain, sync, x, g)
    compare_bn_state(sync, plain)


@pytest.mark.parametrize("eps_mode", ["plus", "clamp"])
def test_eval_uses_running_stats_like_batchnorm(eps_mode):
    plain = nn.BatchNorm2d(5).eval()
    randomize_bn(plain)
    with torch.no_grad():
        plain.running_var[0] = 1e-7  # far below eps: eval must still use var + eps
    sync = twin(SynchronizedBatchNorm2d, plain, eps_mode=eps_mode)
    x, g = _data((4, 5, 3, 3))
    assert_same_step(plain, sync, x, g, atol=1e-6)
    assert int(sync.num_batches_tracked) == 0


def test_one_value_per_channel_raises_like_batchnorm():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        SynchronizedBatchNorm1d(3, eps_mode="clamp").train()(torch.randn(1, 3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3).train()(torch.randn(1, 3))


def test_is_a_drop_in_batchnorm():
    sync = SynchronizedBatchNorm2d(7)
    plain = nn.BatchNorm2d(7)
    assert isinstance(sync, nn.BatchNorm2d)
    assert list(sync.state_dict()) == list(plain.state_dict())
    sync.load_state_dict(plain.state_dict(), strict=True)
    with pytest.raises(ValueError, match="expected 4D input"):
        sync(torch.randn(2, 7))


def _replicated(module, k):
    return DataParallelWithCallback(module, num_cpu_replicas=k)


@pytest.mark.parametrize(
    "dims,shape,k",
    [
        (2, (16, 10, 6, 6), 2),  # even split
        (2, (7, 6, 5, 5), 3),  # uneven 3/2/2
        (2, (8, 6, 5, 5), 3),  # uneven 3/3/2
        (1, (16, 10), 2),
        (1, (4, 6), 4),  # one sample per replica
        (2, (4, 6, 5, 5), 4),  # one sample per replica
        (3, (8, 4, 3, 5, 5), 2),
    ],
)
@pytest.mark.parametrize("eps_mode", ["plus", "clamp"])
def test_replicas_equal_batchnorm_on_full_batch(dims, shape, k, eps_mode):
    plain = PLAIN_BN[dims](shape[1])
    randomize_bn(plain)
    sync = twin(SYNC_BN[dims], plain, eps_mode=eps_mode)
    model = _replicated(sync, k)
    for _ in range(3):
        x, g = _data(shape)
        assert_same_step(plain, model, x, g)
    compare_bn_state(sync, plain)
    assert int(sync.num_batches_tracked) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"affine": False},
        {"track_running_stats": False},
        {"momentum": None},
        {"momentum": 1.0},
    ],
)
def test_replicas_with_options(kwargs):
    plain = nn.BatchNorm2d(6, **kwargs)
    randomize_bn(plain)
    sync = twin(SynchronizedBatchNorm2d, plain, eps_mode="plus")
    model = _replicated(sync, 3)
    for step in range(3):
        if step == 2 and "track_running_stats" in kwargs:
            plain.eval(), sync.eval()  # no running stats: batch statistics in eval too
        x, g = _data((7, 6, 4, 4))
        assert_same_step(plain, model, x, g)
    compare_bn_state(sync, plain)


def test_running_var_is_unbiased_over_the_whole_batch():
    sync = SynchronizedBatchNorm2d(3, momentum=1.0)
    x = torch.randn(5, 3, 4, 4) * 3
    with torch.no_grad():
        _replicated(sync, 2)(x)
    flat = x.transpose(0, 1).reshape(3, -1)
    assert_close(sync.running_var, flat.var(dim=1, unbiased=True), "running_var", atol=1e-5)
    assert_close(sync.running_mean, flat.mean(dim=1), "running_mean", atol=1e-6)


def test_replicas_eval_mode_equals_batchnorm_eval():
    plain = nn.BatchNorm2d(4).eval()
    randomize_bn(plain)
    sync = twin(SynchronizedBatchNorm2d, plain)
    x, g = _data((6, 4, 3, 3))
    assert_same_step(plain, _replicated(sync, 2), x, g)


def test_layer_called_twice_per_forward():
    class Twice(nn.Module):
        def __init__(self, bn):
            super().__init__()
            self.bn = bn

        def forward(self, x):
            return self.bn(self.bn(x) * 2.0 + 1.0)

    plain = nn.BatchNorm2d(4)
    randomize_bn(plain)
    sync = twin(SynchronizedBatchNorm2d, plain, eps_mode="plus")
    x, g = _data((6, 4, 3, 3))
    assert_same_step(Twice(plain), _replicated(Twice(sync), 3), x, g)
    compare_bn_state(sync, plain)
    assert int(sync.num_batches_tracked) == 2


def test_channels_last_input():
    plain = nn.BatchNorm2d(8)
    randomize_bn(plain)
    sync = twin(SynchronizedBatchNorm2d, plain, eps_mode="plus")
    x, g = _data((6, 8, 5, 5))
    x = x.contiguous(memory_format=torch.channels_last)
    assert_same_step(plain, _replicated(sync, 2), x, g)
    compare_bn_state(sync, plain)
    single = sync(x)
    assert single.is_contiguous(memory_format=torch.channels_last)


def test_clamp_mode_uses_max_var_eps():
    """Variance below eps: 'clamp' divides by sqrt(eps), nn.BatchNorm by sqrt(var + eps)."""
    eps = 1e-5
    x = (torch.randn(6, 3, 4, 4, dtype=torch.float64) * 1e-3).requires_grad_(True)
    sync = SynchronizedBatchNorm2d(3, eps=eps, affine=False, eps_mode="clamp").double()
    out = _replicated(sync, 3)(x)
    xd = x.detach()
    mean = xd.mean(dim=(0, 2, 3), keepdim=True)
    var = xd.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    assert (var < eps).all()
    expected = (xd - mean) / torch.sqrt(torch.clamp(var, min=eps))
    assert_close(out.detach(), expected, "clamp output", atol=1e-12)
    torch_bn = nn.BatchNorm2d(3, eps=eps, affine=False).double()(xd)
    assert (out.detach() - torch_bn).abs().max() > 1e-2  # the two formulas really differ here


def test_large_offset_is_numerically_stable():
    """Inputs 100 + N(0, 1) in float32 still match float64 truth (no raw sum of squares)."""
    x = torch.randn(6, 4, 8, 8) + 100.0
    g = torch.randn_like(x)
    truth = nn.BatchNorm2d(4).double()
    out_t, dx_t = run_step(truth, x.double(), g.double())
    sync = SynchronizedBatchNorm2d(4, eps_mode="plus")
    out_s, dx_s = run_step(_replicated(sync, 3), x, g)
    assert_close(out_s, out_t.float(), "output", atol=1e-4, rtol=0)
    assert_close(dx_s, dx_t.float(), "input grad", atol=1e-4, rtol=0)


def test_tiny_groups_one_sample_per_replica_bn1d():
    plain = nn.BatchNorm1d(5)
    sync = twin(SynchronizedBatchNorm1d, plain, eps_mode="plus")
    x, g = _data((2, 5))
    assert_same_step(plain, _replicated(sync, 2), x, g, atol=1e-4)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 4e-3)])
def test_low_precision_inputs(dtype, tol):
    sync = SynchronizedBatchNorm2d(4, eps_mode="plus")
    reference = nn.BatchNorm2d(4)
    x = torch.randn(6, 4, 5, 5)
    out = _replicated(sync, 2)(x.to(dtype))
    assert out.dtype == dtype
    expected = reference(x.to(dtype).float())
    assert_close(out.float(), expected, "output", atol=tol, rtol=0)
    # statistics are accumulated in float32, so the running stats keep float32 precision
    assert sync.running_mean.dtype == torch.float32
    assert_close(sync.running_mean, reference.running_mean, "running_mean", atol=1e-5)
    assert_close(sync.running_var, reference.running_var, "running_var", atol=1e-4)


@pytest.mark.parametrize("eps_mode", ["plus", "clamp"])
def test_gradcheck_through_three_replicas(eps_mode):
    bn = SynchronizedBatchNorm2d(3, eps_mode=eps_mode).double()
    model = _replicated(bn, 3)
    weight = torch.rand(3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(7, 3, 2, 2, dtype=torch.float64, requires_grad=True)

    def fn(inp, w, b):
        # Route the test tensors in as the layer's parameters (the replicas share them).
        bn._parameters["weight"] = w
        bn._parameters["bias"] = b
        return model(inp)

    assert torch.autograd.gradcheck(fn, (x, weight, bias), eps=1e-6, atol=1e-6)


def test_combine_moments_matches_direct_computation():
    parts = [torch.randn(n, 4, dtype=torch.float64) + 50 for n in (1, 3, 0, 5)]
    moments = [local_moments(p) for p in parts]
    counts = torch.tensor([m[0] for m in moments], dtype=torch.float64)
    mean, var = combine_moments(counts, torch.stack([m[1] for m in moments]),
                                torch.stack([m[2] for m in moments]))
    full = torch.cat(parts)
    assert_close(mean, full.mean(0), "mean", atol=1e-12)
    assert_close(var, full.var(0, unbiased=False), "var", atol=1e-12)


def test_deepcopy_pickle_and_state_dict_roundtrip():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), SynchronizedBatchNorm2d(4), nn.ReLU())
    randomize_bn(net[1])
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        DataParallelWithCallback(net, num_cpu_replicas=2)(x)  # replicas must not leak state
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    clone = copy.deepcopy(net)
    for other in (loaded, clone):
        assert other[1]._sync_master is None and other[1]._slave_pipe is None
        for key, value in net.state_dict().items():
            assert torch.equal(other.state_dict()[key], value), key
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    plain.load_state_dict(net.state_dict(), strict=True)
    net.load_state_dict(plain.state_dict(), strict=True)


def test_convert_model_replaces_every_batchnorm_and_keeps_state():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4, affine=False)),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.BatchNorm1d(6),
    )
    randomize_bn(net[1])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    converted = convert_model(net)
    kinds = [type(m) for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert kinds == [SynchronizedBatchNorm2d, SynchronizedBatchNorm2d, SynchronizedBatchNorm1d]
    assert converted[2][0].affine is False
    for key, value in converted.state_dict().items():
        assert torch.equal(value, before[key]), key
    wrapped = convert_model(nn.DataParallel(nn.Sequential(nn.BatchNorm2d(2))))
    assert isinstance(wrapped, DataParallelWithCallback)
    assert isinstance(wrapped.module[0], SynchronizedBatchNorm2d)


def test_combining_replica_statistics_moves_nothing_between_host_and_device(monkeypatch):
    """Issue 17.5 for one process: the counts reach the combined statistics without a
    host-to-device copy (each would wait for the GPU in every layer of every step)."""
    plain = nn.BatchNorm2d(4)
    sync = twin(SynchronizedBatchNorm2d, plain, eps_mode="plus")
    x, g = _data((6, 4, 5, 5))
    replicas = replicate_on_cpu(sync, 2)
    execute_replication_callbacks(replicas)
    halves = [x[:3].clone().requires_grad_(True), x[3:].clone().requires_grad_(True)]
    spy = NoHostTransfers(monkeypatch)
    outs = parallel_apply(replicas, [(halves[0],), (halves[1],)])
    (torch.cat(outs) * g).sum().backward()
    assert spy.calls == []
    monkeypatch.undo()
    out_p, dx_p = run_step(plain, x, g)
    assert_close(torch.cat(outs).detach(), out_p, "output")
    assert_close(torch.cat([h.grad for h in halves]), dx_p, "input grad")
    compare_bn_state(sync, plain)


def _two_replicas_on_gpu0(sync: nn.Module, x: torch.Tensor, g: torch.Tensor):
    """Forward + backward of ``sync`` as two replicas (threads) on cuda:0, half a batch each."""
    replicas = replicate_on_cpu(sync, 2)  # shallow copies: works for CUDA modules too
    execute_replication_callbacks(replicas)
    half = x.shape[0] // 2
    parts = [x[:half].detach().clone().requires_grad_(True),
             x[half:].detach().clone().requires_grad_(True)]
    outs = parallel_apply(replicas, [(parts[0],), (parts[1],)], devices=[0, 0])
    (torch.cat(outs) * g).sum().backward()
    return outs, torch.cat([p.grad for p in parts])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("eps_mode", ["plus", "clamp"])
def test_replicas_on_gpu_under_autocast_equal_batchnorm_cuda(dtype, tol, channels_last,
                                                             eps_mode):
    conv = nn.Conv2d(3, 8, 3, padding=1).cuda()
    plain = nn.BatchNorm2d(8).cuda()
    randomize_bn(plain)
    sync = twin(SynchronizedBatchNorm2d, plain, eps_mode=eps_mode).cuda()
    x = torch.randn(8, 3, 12, 12, device="cuda") * 2 + 0.5
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(
            memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=dtype):
        h = conv(x).detach()  # what a BN layer receives under autocast
        g = torch.randn_like(h)
        out_p, dx_p = run_step(plain, h, g)
        outs, dx_s = _two_replicas_on_gpu0(sync, h, g)
    assert h.dtype == dtype and all(o.dtype == dtype for o in outs)
    if channels_last:
        assert all(o.is_contiguous(memory_format=torch.channels_last) for o in outs)
    assert_close(torch.cat(outs).float(), out_p.float(), "output", atol=tol, rtol=0)
    assert_close(dx_s.float(), dx_p.float(), "input grad", atol=tol, rtol=0)
    compare_bn_state(sync, plain, atol=1e-3)


@pytest.mark.cuda
def test_replica_statistics_never_synchronise_the_gpu_cuda():
    sync = SynchronizedBatchNorm2d(4, eps_mode="clamp").cuda()
    x = torch.randn(6, 4, 5, 5, device="cuda")
    g = torch.randn_like(x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _two_replicas_on_gpu0(sync, x, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
