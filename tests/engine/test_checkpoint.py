"""mit_semseg.engine.checkpoint: per-epoch files, the resumable state, RNG capture, atomicity."""

import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from mit_semseg.engine import checkpoint as ckpt


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def test_atomic_save_failure_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "encoder_epoch_1.pth"
    ckpt.atomic_save({"w": torch.ones(2)}, path)

    def broken_replace(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="killed"):
        ckpt.atomic_save({"w": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["encoder_epoch_1.pth"]


def test_epoch_checkpoint_unwraps_data_parallel(tmp_path):
    enc, dec = _net(), _net()
    history = {"train": {"epoch": [0.0], "loss": [1.0], "acc": [0.5]}}
    paths = ckpt.save_epoch_checkpoint(str(tmp_path), 3, nn.DataParallel(enc), dec, history)
    assert {os.path.basename(p) for p in paths.values()} == {
        "encoder_epoch_3.pth", "decoder_epoch_3.pth", "history_epoch_3.pth"}
    enc_sd = torch.load(paths["encoder"], weights_only=True)
    assert set(enc_sd) == set(enc.state_dict())  # no "module." prefix
    fresh = _net()
    fresh.load_state_dict(enc_sd, strict=True)
    for a, b in zip(fresh.state_dict().values(), enc.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.load(paths["history"], weights_only=True) == history


def test_rng_capture_restore_reproduces_draws():
    state = ckpt.capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.restore_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1]
    assert torch.equal(first[2], second[2])


def test_training_state_round_trip(tmp_path):
    enc, dec = _net(), _net()
    opts = {"encoder": torch.optim.SGD(enc.parameters(), lr=0.1, momentum=0.9),
            "decoder": torch.optim.SGD(dec.parameters(), lr=0.1, momentum=0.9)}
    enc(torch.randn(2, 3, 5, 5)).sum().backward()
    opts["encoder"].step()  # creates momentum buffers
    rng = [ckpt.capture_rng_state()]
    path = tmp_path / ckpt.LAST_CHECKPOINT
    ckpt.save_training_state(path, encoder=enc, decoder=dec, optimizers=opts, epoch=1,
                             iteration=17, history={"train": {"loss": [1.0]}}, rng=rng,
                             world_size=2, config="DIR: x\n")
    state = ckpt.load_training_state(path)
    assert (state["epoch"], state["iteration"], state["world_size"]) == (1, 17, 2)
    assert state["scaler"] is None
    restored = torch.optim.SGD(_net().parameters(), lr=0.1, momentum=0.9)
    restored.load_state_dict(state["optimizers"]["encoder"])
    buf = restored.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(buf, opts["encoder"].state_dict()["state"][0]["momentum_buffer"])
    ckpt.restore_rng_state(state["rng"][0])
    assert torch.equal(torch.get_rng_state(), rng[0]["torch"])


def test_load_training_state_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="resume checkpoint not found"):
        ckpt.load_training_state(tmp_path / "none.pth")
    weights_only = tmp_path / "encoder_epoch_1.pth"
    torch.save(_net().state_dict(), weights_only)
    with pytest.raises(ValueError, match="not a resumable training checkpoint"):
        ckpt.load_training_state(weights_only)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00truncated")
    with pytest.raises(ValueError, match="cannot read resume checkpoint"):
        ckpt.load_training_state(garbage)


def test_resolve_resume_path(tmp_path):
    out = str(tmp_path)
    assert ckpt.resolve_resume_path("", out) is None
    assert ckpt.resolve_resume_path("auto", out) is None  # nothing to resume yet
    last = tmp_path / ckpt.LAST_CHECKPOINT
    last.write_bytes(b"x")
    assert ckpt.resolve_resume_path("auto", out) == str(last)
    assert ckpt.resolve_resume_path(str(last), "elsewhere") == str(last)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ckpt.resolve_resume_path(str(tmp_path / "missing.pth"), out)


def test_remove_stale_temp_files(tmp_path):
    stale = tmp_path / ".checkpoint_last.pth.abc123.tmp"
    stale.write_bytes(b"partial")
    keep = tmp_path / "encoder_epoch_1.pth"
    keep.write_bytes(b"x")
    assert ckpt.remove_stale_temp_files(str(tmp_path)) == [str(stale)]
    assert sorted(os.listdir(tmp_path)) == ["encoder_epoch_1.pth"]
