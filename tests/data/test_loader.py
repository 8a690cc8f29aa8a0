import itertools
import random

import numpy as np
import pytest
import torch
from conftest import make_opt

from mit_semseg.data import TrainDataset, build_train_loader
from mit_semseg.data.loader import (
    TrainSampler,
    data_seed,
    device_batches,
    device_seed,
    global_device_indices,
    seed_cuda_generators,
    user_scattered_collate,
    worker_init_fn,
)


class _Draws(torch.utils.data.Dataset):
    """Reports what the global generators of the process that loads the item produce."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        info = torch.utils.data.get_worker_info()
        return (info.id if info else -1, int(np.random.randint(2**31)), random.random())


def _draws(seed, workers=2):
    loader = torch.utils.data.DataLoader(
        _Draws(), batch_size=1, num_workers=workers, worker_init_fn=worker_init_fn,
        generator=torch.Generator().manual_seed(seed), collate_fn=lambda b: b[0])
    return list(loader)


def test_worker_seeding_differs_per_worker_and_repeats_per_seed():
    first = _draws(seed=0)
    by_worker = {}
    for worker, np_value, py_value in first:
        by_worker.setdefault(worker, []).append((np_value, py_value))
    assert set(by_worker) == {0, 1}
    # each worker's first draws differ: numpy and random were seeded per worker
    assert by_worker[0][0][0] != by_worker[1][0][0]
    assert by_worker[0][0][1] != by_worker[1][0][1]
    assert _draws(seed=0) == first
    assert _draws(seed=1) != first


def _flatten(batches):
    return [torch.cat([b["img_data"].flatten(), b["seg_label"].flatten().float()])
            for step in batches for b in step]


def _dataset(root, **kw):
    opt = make_opt(imgSizes=(24, 32), imgMaxSize=40, random_flip=True, num_class=8,
                   segm_downsampling_rate=8)
    return TrainDataset(root, str(root / "training.odgt"), opt, batch_per_gpu=2, **kw)


def _take(loader, steps):
    out = []
    for step, batch in enumerate(loader):
        if step == steps:
            break
        out.append(batch)
    return out


def test_loader_yields_lists_of_device_batches(synthetic_root):
    batches = _take(build_train_loader(_dataset(synthetic_root), num_devices=3, seed=0), 2)
    assert len(batches) == 2
    for step in batches:
        assert isinstance(step, list) and len(step) == 3
        assert all(set(b) == {"img_data", "seg_label"} for b in step)
        assert all(b["img_data"].shape[0] == 2 for b in step)


def test_same_seed_same_data_whatever_the_workers(synthetic_root):
    serial = _take(build_train_loader(_dataset(synthetic_root), 2, workers=0, seed=5), 4)
    parallel = _take(build_train_loader(_dataset(synthetic_root), 2, workers=2, seed=5), 4)
    for a, b in zip(_flatten(serial), _flatten(parallel)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    other = _take(build_train_loader(_dataset(synthetic_root), 2, workers=0, seed=6), 4)
    assert any(a.shape != b.shape or not torch.equal(a, b)
               for a, b in zip(_flatten(serial), _flatten(other)))
    # the two workers produced different batches (steps 0 and 1 come from different workers)
    flat = _flatten(parallel)
    assert flat[0].shape != flat[2].shape or not torch.equal(flat[0], flat[2])


def test_resume_at_step_k_continues_the_stream(synthetic_root):
    full = _flatten(_take(build_train_loader(_dataset(synthetic_root), 1, seed=3), 5))
    resumed = _flatten(_take(build_train_loader(_dataset(synthetic_root), 1, seed=3,
                                                start_iter=2), 3))
    for a, b in zip(full[2:], resumed):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sampler_steps_take_consecutive_items():
    assert list(TrainSampler(num_devices=2, num_steps=3)) == [0, 1, 2, 3, 4, 5]
    assert list(TrainSampler(num_devices=2, start_iter=1, num_steps=3)) == [2, 3, 4, 5]
    assert len(TrainSampler(num_devices=2, start_iter=1, num_steps=3)) == 4
    assert list(itertools.islice(TrainSampler(num_devices=1), 3)) == [0, 1, 2]
    with pytest.raises(ValueError):
        TrainSampler(num_devices=0)
    with pytest.raises(TypeError, match="endless"):
        len(TrainSampler())


def test_data_seed_depends_on_every_input():
    seeds = {data_seed(s, e, d) for s, e, d in itertools.product((1, 2), (0, 1), (0, 1))}
    assert len(seeds) == 8
    assert data_seed(304, 3, 1) == data_seed(304, 3, 1)


def _make_stream(seed, local_index, start_step):
    """Like a workers=0 DataLoader: draws from the *global* generators as it goes."""
    torch.rand(1)  # a DataLoader draws its base seed from torch's global generator

    def batches():
        for step in itertools.count():
            x = {"x": torch.tensor([float(np.random.rand()), random.random()])}
            if step >= start_step:
                yield x
    return batches()


def _x_per_step(stream, n):
    return [[d["x"] for d in step] for step in itertools.islice(stream, n)]


def test_device_batches_symmetric_across_processes_and_resumable():
    both = _x_per_step(device_batches(_make_stream, 7, [0, 1], 2), 5)
    rank0 = _x_per_step(device_batches(_make_stream, 7, [0], 2), 5)
    rank1 = _x_per_step(device_batches(_make_stream, 7, [1], 2), 5)
    for step in range(5):
        assert torch.equal(both[step][0], rank0[step][0])
        assert torch.equal(both[step][1], rank1[step][0])
        assert not torch.equal(both[step][0], both[step][1])
    resumed = _x_per_step(device_batches(_make_stream, 7, [0, 1], 2, start_step=3), 2)
    assert all(torch.equal(a, b) for x, y in zip(resumed, both[3:]) for a, b in zip(x, y))
    other_epoch = _x_per_step(device_batches(_make_stream, 7, [0, 1], 3), 1)
    assert not torch.equal(other_epoch[0][0], both[0][0])


def test_device_batches_independent_of_and_invisible_to_global_rng():
    seed_a = _x_per_step(device_batches(_make_stream, 1, [0], 0), 3)
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    expected = (torch.rand(2), np.random.rand(), random.random())
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    seed_b = _x_per_step(device_batches(_make_stream, 1, [0], 0, start_step=1), 2)
    assert (torch.equal(torch.rand(2), expected[0]) and np.random.rand() == expected[1]
            and random.random() == expected[2])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(seed_a[1:], seed_b))


def _forbid(monkeypatch, module, names):
    calls = []
    for name in names:
        monkeypatch.setattr(module, name, lambda *a, _n=name, **k: calls.append(_n))
    return calls


def test_device_batches_never_seed_or_swap_cuda_generators(monkeypatch):
    """Loading runs on the CPU: the GPUs' generators (dropout) must stay as training left them
    (torch.manual_seed inside the private generators used to reseed all of them)."""
    calls = _forbid(monkeypatch, torch.cuda, ["manual_seed", "manual_seed_all", "seed",
                                              "seed_all", "set_rng_state", "set_rng_state_all",
                                              "get_rng_state", "get_rng_state_all"])
    _x_per_step(device_batches(_make_stream, 7, [0, 1], 2), 3)
    assert calls == []


class _FakeGpuGenerators:
    """``torch.cuda.default_generators`` of a machine with ``count`` GPUs, as CPU generators."""

    def __init__(self, monkeypatch, count):
        self.generators = tuple(torch.Generator() for _ in range(count))
        monkeypatch.setattr(torch.cuda, "init", lambda: None)
        monkeypatch.setattr(torch.cuda, "default_generators", self.generators)

    def draws(self, index):
        return torch.rand(8, generator=self.generators[index])


def test_each_gpu_gets_its_own_generator_seed_whatever_the_process_layout(monkeypatch):
    gpus = _FakeGpuGenerators(monkeypatch, 2)
    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)
    seed_cuda_generators(304, [cuda0, cuda1], global_device_indices(0, 2))  # one process
    one_process = [gpus.draws(0), gpus.draws(1)]
    assert not torch.equal(one_process[0], one_process[1])  # different dropout masks per GPU
    # torchrun: rank 1 drives one GPU (its cuda:0), global device index 1
    seed_cuda_generators(304, [cuda0], global_device_indices(1, 1))
    assert torch.equal(gpus.draws(0), one_process[1])
    seed_cuda_generators(305, [cuda0], [0])
    assert not torch.equal(gpus.draws(0), one_process[0])  # the run's seed matters
    before = gpus.generators[0].get_state()
    seed_cuda_generators(304, [torch.device("cpu")] * 2, [0, 1])  # CPU devices: nothing
    assert torch.equal(gpus.generators[0].get_state(), before)
    assert device_seed(304, 0) != data_seed(304, 0, 0)
    with pytest.raises(ValueError, match="2 devices but 1 device indices"):
        seed_cuda_generators(304, [cuda0, cuda1], [0])


@pytest.mark.cuda
def test_cuda_generators_survive_the_data_stream_and_differ_per_gpu_cuda():
    gpus = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    seed_cuda_generators(304, gpus, global_device_indices(0, len(gpus)))
    before = [torch.cuda.get_rng_state(g) for g in gpus]
    _x_per_step(device_batches(_make_stream, 7, list(range(len(gpus))), 2), 3)
    assert all(torch.equal(torch.cuda.get_rng_state(g), b) for g, b in zip(gpus, before))
    masks = [torch.nn.functional.dropout(torch.ones(256, device=g), 0.5).cpu() for g in gpus]
    assert all(not torch.equal(masks[0], m) for m in masks[1:])


def test_user_scattered_collate_is_identity():
    batch = [{"a": 1}, {"a": 2}]
    assert user_scattered_collate(batch) is batch
