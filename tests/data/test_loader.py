import random

import numpy as np
import pytest
import torch
from conftest import make_opt

from mit_semseg.data import TrainDataset, build_train_loader, shard_indices
from mit_semseg.data.loader import TrainSampler, worker_init_fn


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


def test_ranks_get_distinct_items():
    steps = 4
    single = list(TrainSampler(num_devices=2, num_steps=steps * 2))
    ranks = [list(TrainSampler(num_devices=2, rank=r, world_size=2, num_steps=steps))
             for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == sorted(single)
    assert ranks[0][:4] == [0, 1, 4, 5] and ranks[1][:4] == [2, 3, 6, 7]
    assert len(TrainSampler(num_devices=2, start_iter=1, num_steps=3)) == 4
    with pytest.raises(ValueError):
        TrainSampler(rank=2, world_size=2)


@pytest.mark.parametrize("num_items,world", [(10, 3), (2, 5), (0, 2), (7, 7)])
def test_shard_indices_contiguous_cover_and_may_be_empty(num_items, world):
    shards = [shard_indices(num_items, r, world) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(num_items))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        shard_indices(num_items, world, world)
