"""mit_semseg.engine.optim: poly schedule and the two SGD optimizers with parameter groups."""

import pytest
import torch
from torch import nn

from mit_semseg.engine import optim


def test_poly_lr_formula():
    assert optim.poly_lr(0.02, 0, 100, 0.9) == 0.02
    assert optim.poly_lr(0.02, 100, 100, 0.9) == 0.0
    assert optim.poly_lr(0.02, 50, 100, 1.0) == pytest.approx(0.01)
    assert optim.poly_lr(0.1, 30, 40, 0.9) == pytest.approx(0.1 * 0.25 ** 0.9)
    with pytest.raises(ValueError, match="cur_iter"):
        optim.poly_lr(0.1, 101, 100, 0.9)


def _encoder_decoder():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)), nn.Conv2d(4, 3, 1)


def test_poly_schedule_sets_every_group():
    encoder, decoder = _encoder_decoder()
    opts = optim.build_optimizers(encoder, decoder, lr_encoder=0.02, lr_decoder=0.04,
                               momentum=0.9, weight_decay=1e-4)
    lrs = optim.PolySchedule({"encoder": 0.02, "decoder": 0.04}, 10, 1.0).apply(opts, 5)
    assert lrs == pytest.approx({"encoder": 0.01, "decoder": 0.02})
    for name, opt in opts.items():
        assert [g["lr"] for g in opt.param_groups] == [lrs[name]] * 2


def test_a_frozen_optimizer_has_lr_zero_until_its_step_then_the_poly_rate():
    encoder, decoder = _encoder_decoder()
    opts = optim.build_optimizers(encoder, decoder, lr_encoder=0.02, lr_decoder=0.04,
                                  momentum=0.9, weight_decay=1e-4)
    schedule = optim.PolySchedule({"encoder": 0.02, "decoder": 0.04}, 10, 1.0,
                                  frozen_until={"encoder": 3})
    rates = [schedule.apply(opts, it) for it in range(5)]
    assert [r["encoder"] for r in rates] == pytest.approx([0, 0, 0, 0.014, 0.012])
    assert [r["decoder"] for r in rates] == pytest.approx([0.04, 0.036, 0.032, 0.028, 0.024])
    assert [g["lr"] for g in opts["encoder"].param_groups] == pytest.approx([0.012] * 2)


def test_group_weight_decays_only_conv_and_linear_weights():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4),
                        nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = optim.group_weight(net)
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
        optim.group_weight(net)


def test_build_optimizers_settings():
    encoder, decoder = _encoder_decoder()
    opts = optim.build_optimizers(encoder, decoder, lr_encoder=0.1, lr_decoder=0.2,
                               momentum=0.8, weight_decay=5e-4)
    assert set(opts) == {"encoder", "decoder"}
    enc = opts["encoder"]
    assert isinstance(enc, torch.optim.SGD)
    assert enc.param_groups[0]["weight_decay"] == 5e-4 and enc.param_groups[1]["weight_decay"] == 0
    assert enc.param_groups[0]["momentum"] == 0.8 and opts["decoder"].defaults["lr"] == 0.2
