"""mit_semseg.engine.trainer: one epoch, the run's state, device wrappers, resumable state."""

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from mit_semseg.engine.checkpoint import RunStamp, load_training_state
from mit_semseg.engine.distributed import DistContext
from mit_semseg.engine.optim import PolySchedule, build_optimizers
from mit_semseg.engine.trainer import (
    BN_MOMENTUM_AS_ORIGINAL,
    ResumableCheckpoint,
    TrainState,
    bn_momentum_by_part,
    check_labels,
    forward_batch,
    norm_layer_for,
    parallelize,
    restore_training_state,
    set_bn_momentum,
    train_one_epoch,
)
from mit_semseg.nn.precision import grad_scaler

CPU = torch.device("cpu")


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


def test_forward_batch_requires_one_dict_for_plain_module():
    net = TinySegModule()
    loss, acc = forward_batch(net, [_batch(0)], torch.device("cpu"), scattered=False)
    assert loss.ndim == 0 and 0 <= acc.item() <= 1
    with pytest.raises(ValueError, match="one batch dict per step, got 2"):
        forward_batch(net, [_batch(0), _batch(1)], torch.device("cpu"), scattered=False)


def _state(net, **kwargs):
    """Epoch 1 (0-based) of 2 with 4 steps each."""
    opts = build_optimizers(net.encoder, net.decoder, lr_encoder=0.1, lr_decoder=0.05,
                            momentum=0.9, weight_decay=1e-3)
    schedule = PolySchedule({"encoder": 0.1, "decoder": 0.05}, 8, 0.9)
    return TrainState(module=net, optimizers=opts, schedule=schedule, epoch_iters=4, device=CPU,
                      disp_iter=2, **{"iteration": 4, "scaler": grad_scaler(CPU, ""), **kwargs})


def _run_epoch(net, batches, start_iter=0, **kwargs):
    state, steps = _state(net, iteration=4 + start_iter, **kwargs), []
    result = train_one_epoch(state, batches, on_step=lambda s: steps.append(s.iteration))
    return state.history, steps, result


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


def test_a_frozen_encoder_takes_no_step_and_gathers_no_momentum():
    torch.manual_seed(0)
    net = TinySegModule()
    encoder, decoder = copy.deepcopy(net.encoder), copy.deepcopy(net.decoder)
    state = _state(net, iteration=0)
    state = dataclasses.replace(state, schedule=PolySchedule(
        {"encoder": 0.1, "decoder": 0.05}, 8, 0.9, frozen_until={"encoder": 4}))
    history = train_one_epoch(state, iter([[_batch(i)] for i in range(4)]))
    assert history["loss"] > 0
    for frozen, before in zip(net.encoder.parameters(), encoder.parameters()):
        assert torch.equal(frozen, before)
        assert not state.optimizers["encoder"].state.get(frozen)  # no momentum buffer
    assert not all(torch.equal(a, b) for a, b in zip(net.decoder.parameters(),
                                                      decoder.parameters()))
    assert state.history["train"]["lr_encoder"] == [0.0, 0.0, 0.0]  # steps 0, 2, 3
    train_one_epoch(state, iter([[_batch(i)] for i in range(4, 8)]))  # thawed: it learns
    assert not all(torch.equal(a, b) for a, b in zip(net.encoder.parameters(),
                                                      encoder.parameters()))


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


def _nan_batch(seed: int) -> dict:
    batch = _batch(seed)
    batch["img_data"][0, 0, 0, 0] = float("nan")
    return batch


def test_fp16_policy_scaler_skips_a_nonfinite_step_and_stops_after_k_in_a_row(caplog):
    """With an enabled gradient scaler a non-finite loss is a skipped step (weights untouched,
    scale lowered, the step still counted); more than max_nonfinite_steps in a row stop."""
    torch.manual_seed(0)
    net = TinySegModule()
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    state = _state(net, iteration=0, scaler=scaler, max_nonfinite_steps=2)
    weights = []
    batches = [[_batch(0)], [_nan_batch(1)], [_nan_batch(2)], [_batch(3)]]
    result = train_one_epoch(state, iter(batches),
                             on_step=lambda s: weights.append(copy.deepcopy(net.state_dict())))
    assert state.iteration == 4 and state.nonfinite_steps == 0
    for before, after in zip(weights[0].values(), weights[2].values()):  # steps 2, 3 skipped
        assert torch.equal(before, after)
    changed = [not torch.equal(a, b) for a, b in zip(weights[2].values(), weights[3].values())]
    assert any(changed)  # the finite step after them trains again
    assert scaler.get_scale() == 256.0  # halved twice
    assert "the gradient scaler skips this step (2 in a row, at most 2)" in caplog.text
    assert result["loss"] > 0  # skipped steps stay out of the running mean
    recorded = state.history["train"]
    assert recorded["iteration"] == [0, 2, 3] and math.isnan(recorded["loss"][1])
    with pytest.raises(FloatingPointError, match=r"3th non-finite loss in a row \(TRAIN\."
                                                 r"max_nonfinite_steps 2\)"):
        train_one_epoch(state, iter([[_nan_batch(i)] for i in range(4)]))


def test_without_a_scaler_the_first_nonfinite_loss_stops():
    state = _state(TinySegModule(), iteration=0, max_nonfinite_steps=5)
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 1, iteration 1"):
        train_one_epoch(state, iter([[_batch(0)], [_nan_batch(1)]]))


def test_out_of_range_labels_are_caught_on_the_host_before_the_forward():
    net = TinySegModule(num_class=3)
    net.decoder.num_class = 3
    calls = []
    net.register_forward_pre_hook(lambda *_: calls.append(1))
    bad = _batch(0)
    bad["seg_label"][1, 2, 3] = 3  # classes are 0..2
    state = _state(net, iteration=0)
    with pytest.raises(ValueError, match=r"device 1 at epoch 1, iteration 0 hold values "
                                         r"-1\.\.3, but only -1 \(ignored\) and 0\.\.2"):
        train_one_epoch(state, iter([[_batch(1), bad]]))
    assert calls == [] and state.iteration == 0
    bad["seg_label"][1, 2, 3] = -2
    with pytest.raises(ValueError, match=r"values -2\.\.2"):
        check_labels([bad], 3, "here")
    check_labels([_batch(2), {"seg_label": torch.full((1, 2, 2), 5, device="meta")}], 3, "x")


def test_checkpoint_every_n_steps_but_not_at_epoch_ends(tmp_path):
    path = tmp_path / "checkpoint_last.pth"
    last = ResumableCheckpoint(str(path), every=2, stamp=RunStamp(config="DIR: x\n"))
    state = _state(TinySegModule(), iteration=0)  # 4 steps per epoch
    due_at = []
    for done in range(1, 9):
        state.iteration = done
        if last.due(state):
            due_at.append(done)
    assert due_at == [2, 6]  # 4 and 8 end an epoch: the end-of-epoch code saves those
    assert not path.exists()  # asking writes nothing


def test_saved_state_restores_the_run(tmp_path):
    torch.manual_seed(0)
    state = _state(TinySegModule(), iteration=0)
    train_one_epoch(state, iter([[_batch(i)] for i in range(4)]))
    last = ResumableCheckpoint(str(tmp_path / "last.pth"), stamp=RunStamp(config="DIR: x\n"))
    last.save(state)
    after_save = torch.rand(3)  # the random stream a resumed run must continue
    saved = load_training_state(last.path)
    assert (saved["epoch"], saved["iteration"], saved["config"]) == (1, 4, "DIR: x\n")

    fresh = _state(TinySegModule(), iteration=0)
    fresh.module.load_state_dict(state.module.state_dict())
    restore_training_state(fresh, saved, last.path)
    assert fresh.iteration == 4 and fresh.history == state.history
    assert torch.equal(torch.rand(3), after_save)
    for name, optimizer in state.optimizers.items():
        ours = optimizer.state_dict()["state"]
        theirs = fresh.optimizers[name].state_dict()["state"]
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key]["momentum_buffer"], theirs[key]["momentum_buffer"])
    # both continue identically
    batches = [[_batch(10 + i)] for i in range(4)]
    train_one_epoch(state, iter(batches))
    train_one_epoch(fresh, iter(batches))
    for a, b in zip(state.module.state_dict().values(), fresh.module.state_dict().values()):
        assert torch.equal(a, b)


def test_parallelize_for_each_device_setup():
    single, scattered = parallelize(TinySegModule(), [CPU], DistContext(), sync_bn=True)
    assert isinstance(single, TinySegModule) and not scattered
    replicas, scattered = parallelize(TinySegModule(), [CPU, CPU], DistContext(), sync_bn=True)
    assert type(replicas).__name__ == "UserScatteredDataParallel" and scattered
    loss, acc = forward_batch(replicas, [_batch(0), _batch(1)], CPU, scattered)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_norm_layer_for_devices():
    assert norm_layer_for(1, sync_bn=True) is nn.BatchNorm2d
    assert norm_layer_for(2, sync_bn=False) is nn.BatchNorm2d
    synced = norm_layer_for(2, sync_bn=True)(4)
    assert type(synced).__name__ == "SynchronizedBatchNorm2d" and synced.eps_mode == "plus"


def test_set_bn_momentum_reaches_every_kind_of_batchnorm():
    from mit_semseg.nn import SynchronizedBatchNorm2d

    net = nn.Sequential(nn.BatchNorm1d(3), nn.Sequential(nn.BatchNorm2d(3),
                        SynchronizedBatchNorm2d(3)), nn.SyncBatchNorm(3), nn.GroupNorm(1, 3))
    assert set_bn_momentum(net, 0.03) == 4
    assert [getattr(m, "momentum", None) for m in net.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)] == [0.03] * 4


def test_bn_momentum_by_part():
    assert bn_momentum_by_part(0.2, "hrnetv2") == {"encoder": 0.2, "decoder": 0.2}
    assert bn_momentum_by_part(1.0, "resnet50") == {"encoder": 1.0, "decoder": 1.0}
    for bad in (0.0, 1.5, -0.5):
        with pytest.raises(ValueError, match="TRAIN.bn_momentum"):
            bn_momentum_by_part(bad, "resnet50")


# What the original's modules were built with, read from the original itself
_ORIGINAL_MOMENTA = """
import json, sys, torch
from torch import nn
from mit_semseg.models import ModelBuilder
torch.save({}, sys.argv[1])  # a weights file keeps ModelBuilder from downloading
def momenta(module):
    return sorted({m.momentum for m in module.modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm)})
out = {"encoders": {}, "decoders": {}}
for arch in sys.argv[2].split(","):
    out["encoders"][arch] = momenta(ModelBuilder.build_encoder(arch, 2048, sys.argv[1]))
for arch in ("c1", "c1_deepsup", "ppm", "ppm_deepsup", "upernet"):
    out["decoders"][arch] = momenta(ModelBuilder.build_decoder(arch, 2048, 5))
print(json.dumps(out))
"""


def test_original_bn_momentum_values_are_the_originals(upstream_path, tmp_path):
    encoders = ["mobilenetv2dilated", "resnet18dilated", "hrnetv2"]
    result = subprocess.run(
        [sys.executable, "-c", _ORIGINAL_MOMENTA, str(tmp_path / "empty.pth"),
         ",".join(encoders)],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(upstream_path), OMP_NUM_THREADS="1"),
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    original = json.loads(result.stdout.strip().splitlines()[-1])
    for arch in encoders:
        ours = bn_momentum_by_part(BN_MOMENTUM_AS_ORIGINAL, arch)
        assert original["encoders"][arch] == [ours["encoder"]], arch
        assert all(values == [ours["decoder"]] for values in original["decoders"].values())
