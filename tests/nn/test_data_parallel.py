"""UserScatteredDataParallel: one dict per replica, gathered outputs, SyncBN across dicts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mit_semseg.nn import (
    SynchronizedBatchNorm2d,
    UserScatteredDataParallel,
    async_copy_to,
    dict_gather,
)

from ._helpers import assert_close, randomize_bn


class DictNet(nn.Module):
    """Takes a feed dict like SegmentationModule; returns a 0-dim loss and a per-image map."""

    def __init__(self, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = norm_layer(4)

    def forward(self, feed):
        feat = self.bn(self.conv(feed["img_data"]))
        loss = (feat * feed["weight"]).mean()
        return loss, {"feat_mean": feat.mean(dim=(2, 3)), "tag": feed["tag"]}


def _feed(batch, size, tag):
    return {
        "img_data": torch.randn(batch, 3, size, size),
        "weight": torch.randn(1, 4, size, size),
        "tag": tag,
    }


def test_each_replica_gets_its_own_dict_and_gather_equals_separate_runs():
    torch.manual_seed(0)
    net = DictNet().eval()  # plain BN in eval: each dict alone is an independent computation
    feeds = [_feed(2, 8, "a"), _feed(3, 11, "b"), _feed(1, 5, "c")]
    model = UserScatteredDataParallel(net, num_cpu_replicas=3)
    with torch.no_grad():
        loss, extra = model(feeds)
        separate = [net(f) for f in feeds]
    assert loss.shape == (3,)  # 0-dim outputs become one entry per replica
    assert_close(loss, torch.stack([s[0] for s in separate]), "loss", atol=1e-6)
    assert_close(extra["feat_mean"], torch.cat([s[1]["feat_mean"] for s in separate]),
                 "feat_mean", atol=1e-6)
    assert extra["tag"] == ["a", "b", "c"]


def test_fewer_dicts_than_replicas_and_default_one_replica_per_dict():
    net = DictNet().eval()
    feeds = [_feed(2, 6, "x"), _feed(2, 7, "y")]
    with torch.no_grad():
        loss_a, _ = UserScatteredDataParallel(net, num_cpu_replicas=4)(feeds)
        loss_b, _ = UserScatteredDataParallel(net)(feeds)  # no GPU: a CPU replica per dict
        expected = torch.stack([net(f)[0] for f in feeds])
    assert_close(loss_a, expected, "loss (4 slots)", atol=1e-6)
    assert_close(loss_b, expected, "loss (auto)", atol=1e-6)


def test_syncbn_statistics_cover_all_dicts_uneven_split():
    """Dicts of 4 and 2 images (same size): conv + SyncBN equals one plain run on all 6."""
    torch.manual_seed(0)
    plain = DictNet()
    randomize_bn(plain.bn)
    synced = DictNet(lambda c: SynchronizedBatchNorm2d(c, eps_mode="plus"))
    synced.load_state_dict(plain.state_dict())
    images = torch.randn(6, 3, 7, 7)
    weight = torch.randn(1, 4, 7, 7)
    feeds = [{"img_data": images[:4], "weight": weight, "tag": 0},
             {"img_data": images[4:], "weight": weight, "tag": 1}]
    model = UserScatteredDataParallel(synced, num_cpu_replicas=2)
    loss_s, extra_s = model(feeds)
    # replica losses are means over their own dict; weight them back to the full-batch mean
    (loss_s[0] * 4 / 6 + loss_s[1] * 2 / 6).backward()
    loss_p, extra_p = plain({"img_data": images, "weight": weight, "tag": 0})
    loss_p.backward()
    assert_close(extra_s["feat_mean"], extra_p["feat_mean"].detach(), "features")
    assert_close(synced.conv.weight.grad, plain.conv.weight.grad, "conv weight grad")
    assert_close(synced.bn.weight.grad, plain.bn.weight.grad, "bn weight grad")
    assert_close(synced.bn.running_var, plain.bn.running_var, "running_var")
    assert_close(synced.bn.running_mean, plain.bn.running_mean, "running_mean")


def test_bad_inputs_are_reported():
    model = UserScatteredDataParallel(DictNet(), num_cpu_replicas=2)
    with pytest.raises(TypeError, match="one positional argument"):
        model(_feed(2, 5, "a"))
    with pytest.raises(TypeError, match="no keyword arguments"):
        model([_feed(2, 5, "a")], extra=1)
    with pytest.raises(ValueError, match="3 per-device inputs but only 2"):
        model([_feed(2, 5, "a")] * 3)
    with pytest.raises(ValueError, match="empty list"):
        model([])


def test_async_copy_to_recurses_and_keeps_non_tensors():
    obj = {"t": torch.ones(2), "l": [torch.zeros(1), "s"], "n": None, "tup": (torch.ones(1),)}
    out = async_copy_to(obj, "cpu")
    assert set(out) == set(obj)
    assert torch.equal(out["t"], obj["t"]) and out["l"][1] == "s" and out["n"] is None
    assert isinstance(out["tup"], tuple) and torch.equal(out["tup"][0], obj["tup"][0])


def test_dict_gather_structure():
    outs = [(torch.tensor(1.0), {"m": torch.ones(2, 3)}, None),
            (torch.tensor(3.0), {"m": torch.zeros(1, 3)}, None)]
    loss, extra, nothing = dict_gather(outs, "cpu")
    assert torch.equal(loss, torch.tensor([1.0, 3.0]))
    assert extra["m"].shape == (3, 3) and nothing is None
    with pytest.raises(ValueError, match="different keys"):
        dict_gather([{"a": torch.ones(1)}, {"b": torch.ones(1)}], "cpu")


@pytest.mark.cuda
def test_cuda_single_device_copies_dict_to_gpu():
    net = DictNet().cuda().eval()
    feed = _feed(2, 6, "g")
    model = UserScatteredDataParallel(net, device_ids=[0])
    with torch.no_grad():
        loss, _ = model([feed])
        expected = net(async_copy_to(feed, 0))[0]
    assert loss.is_cuda and torch.allclose(loss, expected)
