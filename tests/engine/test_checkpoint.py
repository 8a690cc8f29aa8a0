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


class _FakeCudaGenerators:
    """Stands in for ``torch.cuda``'s per-GPU generator access on a machine with ``count``
    GPUs: CPU generators, and an IndexError for a GPU that does not exist, as torch raises."""

    def __init__(self, count: int):
        self.generators = [torch.Generator().manual_seed(100 + i) for i in range(count)]
        self.read, self.written = [], []

    def _index(self, device) -> int:
        index = torch.device("cuda", device).index if isinstance(device, int) else device.index
        if index >= len(self.generators):
            raise IndexError("tuple index out of range")
        return index

    def get_rng_state(self, device="cuda"):
        self.read.append(self._index(device))
        return self.generators[self._index(device)].get_state()

    def set_rng_state(self, state, device="cuda"):
        self.written.append(self._index(device))
        self.generators[self._index(device)].set_state(state)

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get_rng_state)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_rng_state)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.generators))


def _gpu_state(seed: int) -> torch.Tensor:
    return torch.Generator().manual_seed(seed).get_state()


def test_rng_capture_reads_only_this_process_gpus(monkeypatch):
    fake = _FakeCudaGenerators(4)
    fake.install(monkeypatch)
    state = ckpt.capture_rng_state([torch.device("cuda", 2), torch.device("cuda", 3)])
    assert fake.read == [2, 3]
    assert torch.equal(state["cuda"][0], fake.generators[2].get_state())
    assert ckpt.capture_rng_state()["cuda"] == []  # a CPU process reads no GPU


def test_rng_restore_with_more_saved_gpu_states_than_gpus(monkeypatch, caplog):
    """A checkpoint with one state per GPU of a 4-GPU machine, resumed on 1 GPU: no
    IndexError, GPU 0 gets the first state, a warning names the counts."""
    fake = _FakeCudaGenerators(1)
    fake.install(monkeypatch)
    saved = {**ckpt.capture_rng_state(), "cuda": [_gpu_state(s) for s in range(4)]}
    ckpt.restore_rng_state(saved, [torch.device("cuda", 0)])
    assert fake.written == [0]
    assert torch.equal(fake.generators[0].get_state(), saved["cuda"][0])
    assert "4 CUDA generator state(s) for 1 GPU(s)" in caplog.text
    caplog.clear()
    fake2 = _FakeCudaGenerators(2)  # fewer saved states than GPUs: the rest keep their seeds
    fake2.install(monkeypatch)
    untouched = fake2.generators[1].get_state()
    ckpt.restore_rng_state({**saved, "cuda": saved["cuda"][:1]},
                           [torch.device("cuda", 0), torch.device("cuda", 1)])
    assert fake2.written == [0] and torch.equal(fake2.generators[1].get_state(), untouched)
    assert "keep fresh seeds" in caplog.text


def test_process_rng_state_takes_gpu_states_by_global_device_index():
    def entry(tag, gpus):
        return {"python": tag, "cuda": [_gpu_state(g) for g in gpus]}

    torchrun = [entry("rank0", [10]), entry("rank1", [11])]  # 2 processes x 1 GPU
    one_process = ckpt.process_rng_state(torchrun, rank=0, first_gpu=0, num_gpus=2)
    assert one_process["python"] == "rank0"
    expected = [_gpu_state(10), _gpu_state(11)]
    assert len(one_process["cuda"]) == 2
    assert all(torch.equal(a, b) for a, b in zip(one_process["cuda"], expected))
    dp = [entry("rank0", [20, 21, 22, 23])]  # 1 process x 4 GPUs (or every GPU of a machine)
    rank1 = ckpt.process_rng_state(dp, rank=1, first_gpu=1, num_gpus=1)
    assert rank1["python"] == "rank0" and len(rank1["cuda"]) == 1
    assert torch.equal(rank1["cuda"][0], _gpu_state(21))
    assert ckpt.process_rng_state(dp, rank=0, first_gpu=0, num_gpus=0)["cuda"] == []


@pytest.mark.cuda
def test_cuda_rng_round_trip_reproduces_dropout_masks_cuda():
    gpu = torch.device("cuda", 0)
    state = ckpt.capture_rng_state([gpu])
    x = torch.ones(4, 8, 16, 16, device=gpu)
    first = torch.nn.functional.dropout2d(x, 0.5, training=True)
    extra = [torch.cuda.get_rng_state(gpu)] * 3  # more saved states than this machine's GPUs
    ckpt.restore_rng_state({**state, "cuda": state["cuda"] + extra}, [gpu])
    again = torch.nn.functional.dropout2d(x, 0.5, training=True)
    assert torch.equal(first, again)


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
                             stamp=ckpt.RunStamp(world_size=2, config="DIR: x\n"))
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
