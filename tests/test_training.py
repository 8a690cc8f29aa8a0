"""mit_semseg.training: schedule, parameter groups, data stream, AMP and one epoch."""

import copy
import itertools
import random

import numpy as np
import pytest
import torch
from torch import nn

from mit_semseg import training as tr


class TinySegModule(nn.Module):
    """Stand-in with the SegmentationModule training contract: dict -> (loss, acc)."""

    def __init__(self, num_class: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.decoder = nn.Sequential(nn.Conv2d(4, num_class, 1))
        self.crit = nn.NLLLoss(ignore_index=-1)

    def forward(self, feed):
        logits = self.decoder(self.encoder(feed["img_data"]))
        loss = self.crit(torch.log_softmax(logits, 1), feed["seg_label"])
        valid = feed["seg_label"] >= 0
        acc = (logits.argmax(1) == feed["seg_label"])[valid].float().mean()
        return loss, acc


def _batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"img_data": torch.randn(2, 3, 6, 6, generator=g),
            "seg_label": torch.randint(-1, 3, (2, 6, 6), generator=g)}


def test_poly_lr_formula():
    assert tr.poly_lr(0.02, 0, 100, 0.9) == 0.02
    assert tr.poly_lr(0.02, 100, 100, 0.9) == 0.0
    assert tr.poly_lr(0.02, 50, 100, 1.0) == pytest.approx(0.01)
    assert tr.poly_lr(0.1, 30, 40, 0.9) == pytest.approx(0.1 * 0.25 ** 0.9)
    with pytest.raises(ValueError, match="cur_iter"):
        tr.poly_lr(0.1, 101, 100, 0.9)


def test_poly_schedule_sets_every_group():
    net = TinySegModule()
    opts = tr.build_optimizers(net.encoder, net.decoder, lr_encoder=0.02, lr_decoder=0.04,
                               momentum=0.9, weight_decay=1e-4)
    lrs = tr.PolySchedule({"encoder": 0.02, "decoder": 0.04}, 10, 1.0).apply(opts, 5)
    assert lrs == pytest.approx({"encoder": 0.01, "decoder": 0.02})
    for name, opt in opts.items():
        assert [g["lr"] for g in opt.param_groups] == [lrs[name]] * 2


def test_group_weight_decays_only_conv_and_linear_weights():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4),
                        nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = tr.group_weight(net)
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[4].weight)}
    expected_no_decay = {id(p) for p in (net[0].bias, net[1].weight, net[1].bias,
                                         net[2].weight, net[2].bias, net[4].bias)}
    assert {id(p) for p in no_decay["params"]} == expected_no_decay
    assert no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))


def test_group_weight_rejects_unknown_parameters():
    net = nn.Module()
    net.scale = nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match="scale"):
        tr.group_weight(net)


def test_build_optimizers_settings():
    net = TinySegModule()
    opts = tr.build_optimizers(net.encoder, net.decoder, lr_encoder=0.1, lr_decoder=0.2,
                               momentum=0.8, weight_decay=5e-4)
    assert set(opts) == {"encoder", "decoder"}
    enc = opts["encoder"]
    assert isinstance(enc, torch.optim.SGD)
    assert enc.param_groups[0]["weight_decay"] == 5e-4 and enc.param_groups[1]["weight_decay"] == 0
    assert enc.param_groups[0]["momentum"] == 0.8 and opts["decoder"].defaults["lr"] == 0.2


def test_data_seed_depends_on_every_input():
    seeds = {tr.data_seed(s, e, d) for s, e, d in itertools.product((1, 2), (0, 1), (0, 1))}
    assert len(seeds) == 8
    assert tr.data_seed(304, 3, 1) == tr.data_seed(304, 3, 1)


def _make_loader(seed, local_index, start_step):
    """Like a workers=0 DataLoader: draws from the *global* generators as it goes."""
    torch.rand(1)  # a DataLoader draws its base seed from torch's global generator

    def batches():
        for step in itertools.count():
            x = {"x": torch.tensor([float(np.random.rand()), random.random()])}
            if step >= start_step:
                yield x
    return batches()


def _take(stream, n):
    return [[d["x"] for d in step] for step in itertools.islice(stream, n)]


def test_device_batches_symmetric_across_processes_and_resumable():
    both = _take(tr.device_batches(_make_loader, 7, [0, 1], 2), 5)
    rank0 = _take(tr.device_batches(_make_loader, 7, [0], 2), 5)
    rank1 = _take(tr.device_batches(_make_loader, 7, [1], 2), 5)
    for step in range(5):
        assert torch.equal(both[step][0], rank0[step][0])
        assert torch.equal(both[step][1], rank1[step][0])
        assert not torch.equal(both[step][0], both[step][1])
    resumed = _take(tr.device_batches(_make_loader, 7, [0, 1], 2, start_step=3), 2)
    assert all(torch.equal(a, b) for x, y in zip(resumed, both[3:]) for a, b in zip(x, y))
    other_epoch = _take(tr.device_batches(_make_loader, 7, [0, 1], 3), 1)
    assert not torch.equal(other_epoch[0][0], both[0][0])


def test_device_batches_independent_of_and_invisible_to_global_rng():
    seed_a = _take(tr.device_batches(_make_loader, 1, [0], 0), 3)
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    expected = (torch.rand(2), np.random.rand(), random.random())
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    seed_b = _take(tr.device_batches(_make_loader, 1, [0], 0, start_step=1), 2)
    assert (torch.equal(torch.rand(2), expected[0]) and np.random.rand() == expected[1]
            and random.random() == expected[2])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(seed_a[1:], seed_b))


def test_forward_batch_requires_one_dict_for_plain_module():
    net = TinySegModule()
    loss, acc = tr.forward_batch(net, [_batch(0)], torch.device("cpu"), scattered=False)
    assert loss.ndim == 0 and 0 <= acc.item() <= 1
    with pytest.raises(ValueError, match="one batch dict per step, got 2"):
        tr.forward_batch(net, [_batch(0), _batch(1)], torch.device("cpu"), scattered=False)


def test_amp_autocast():
    cpu = torch.device("cpu")
    with tr.amp_autocast(cpu, "bf16"):
        out = nn.Linear(4, 2)(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16
    with tr.amp_autocast(cpu, ""):
        assert nn.Linear(4, 2)(torch.randn(3, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        tr.amp_autocast(cpu, "fp16")
    assert not tr.make_grad_scaler(cpu, "fp16").is_enabled()


def _run_epoch(net, batches, start_iter=0, **kwargs):
    opts = tr.build_optimizers(net.encoder, net.decoder, lr_encoder=0.1, lr_decoder=0.05,
                               momentum=0.9, weight_decay=1e-3)
    schedule = tr.PolySchedule({"encoder": 0.1, "decoder": 0.05}, 8, 0.9)
    history, steps = tr.new_history(), []
    result = tr.train_one_epoch(net, batches, opts, schedule, epoch=1, epoch_iters=4,
                                start_iter=start_iter, device=torch.device("cpu"),
                                disp_iter=2, history=history, on_step=steps.append, **kwargs)
    return history, steps, result


def test_train_one_epoch_matches_a_hand_written_loop():
    torch.manual_seed(0)
    net = TinySegModule()
    reference = copy.deepcopy(net)
    batches = [[_batch(i)] for i in range(4)]
    history, steps, result = _run_epoch(net, iter(batches))
    # independent computation: plain torch SGD with the poly lr of global iterations 4..7
    params = {"encoder": reference.encoder, "decoder": reference.decoder}
    opts = {}
    for name, base in (("encoder", 0.1), ("decoder", 0.05)):
        mod = params[name]
        decay = [m.weight for m in mod.modules() if isinstance(m, nn.Conv2d)]
        rest = [p for p in mod.parameters() if all(p is not d for d in decay)]
        opts[name] = (torch.optim.SGD([{"params": decay}, {"params": rest, "weight_decay": 0}],
                                      lr=base, momentum=0.9, weight_decay=1e-3), base)
    reference.train()
    for i, batch in enumerate(batches):
        for opt, base in opts.values():
            for g in opt.param_groups:
                g["lr"] = base * (1 - (4 + i) / 8) ** 0.9
            opt.zero_grad()
        loss, _ = reference(batch[0])
        loss.backward()
        for opt, _ in opts.values():
            opt.step()
    for a, b in zip(net.state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert steps == [5, 6, 7, 8]
    record = history["train"]
    assert record["iteration"] == [4, 6, 7]  # every disp_iter steps and the last one
    assert record["epoch"] == [1.0, 1.5, 1.75]
    assert record["lr_encoder"] == pytest.approx([0.1 * (1 - it / 8) ** 0.9 for it in (4, 6, 7)])
    assert 0 < result["loss"] and 0 <= result["acc"] <= 1


def test_train_one_epoch_resumes_mid_epoch_and_fix_bn():
    net = TinySegModule()
    before = net.encoder[1].running_mean.clone()
    _, steps, _ = _run_epoch(net, iter([[_batch(i)] for i in range(2)]), start_iter=2,
                             fix_bn=True)
    assert steps == [7, 8]
    assert not net.training
    assert torch.equal(net.encoder[1].running_mean, before)  # BN statistics frozen


def test_train_one_epoch_stops_on_nan_and_on_short_stream():
    net = TinySegModule()
    bad = _batch(0)
    bad["img_data"][0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="loss is nan"):
        _run_epoch(net, iter([[bad]]))
    with pytest.raises(RuntimeError, match="ended after 1 of 4 steps"):
        _run_epoch(TinySegModule(), iter([[_batch(0)]]))


def test_init_distributed_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = tr.init_distributed("auto", use_cuda=False)
    assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main) == (0, 1, False, True)
    assert tr.gather_objects({"a": 1}, ctx) == [{"a": 1}]


@pytest.mark.parametrize("arch_encoder, fc_dim", [("resnet18dilated", 512),
                                                  ("mobilenetv2dilated", 320)])
def test_training_module_takes_decoder_widths_from_the_encoder(arch_encoder, fc_dim):
    # The original sized UPerNet for ResNet-50 whatever the encoder; ours reads the widths.
    module = tr.build_training_module(arch_encoder=arch_encoder, arch_decoder="upernet",
                                      fc_dim=fc_dim, num_class=5)
    batch = {"img_data": torch.randn(1, 3, 64, 64),
             "seg_label": torch.randint(-1, 5, (1, 16, 16))}
    loss, acc = module(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="fc_dim"):
        tr.build_training_module(arch_encoder=arch_encoder, arch_decoder="upernet",
                                 fc_dim=2048, num_class=5)
