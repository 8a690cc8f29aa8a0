"""Training data loader: one list of per-device batch dicts per step, reproducible from a seed.

The loader's batch size equals the number of devices of the process, and each element is a
whole per-device batch built by :class:`~mit_semseg.data.datasets.TrainDataset`. The sampler
hands out item indices step by step; since an item is a pure function of
``(dataset seed, index)``, the data of a step does not depend on the number of workers, and a
run resumed at step ``k`` (``start_iter=k``) sees exactly the batches an uninterrupted run
sees. Under ``torch.distributed``, pass ``rank`` and ``world_size``: ranks then take
interleaved indices, so they never load the same item.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from mit_semseg.lib.nn import user_scattered_collate

__all__ = [
    "TrainSampler",
    "build_train_loader",
    "shard_indices",
    "worker_init_fn",
]


def worker_init_fn(worker_id: int) -> None:
    """Seeds ``numpy`` and ``random`` of a loader worker from its torch seed.

    ``torch`` gives every worker ``base_seed + worker_id``, with ``base_seed`` drawn from the
    loader's generator, but leaves numpy and ``random`` as forked from the parent, so without
    this all workers would draw the same numbers. OpenCV's own thread pool is switched off:
    the workers already run in parallel.
    """
    info = torch.utils.data.get_worker_info()
    seed = info.seed if info is not None else torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    cv2.setNumThreads(0)


class TrainSampler(Sampler[int]):
    """Indices of the training stream: step ``s`` of rank ``r`` takes ``num_devices`` items.

    Step ``s`` of rank ``r`` yields indices ``((s * world_size) + r) * num_devices + d`` for
    ``d < num_devices``, starting at ``start_iter``; it ends after ``num_steps`` steps, or
    never if ``num_steps`` is None.
    """

    def __init__(
        self,
        num_devices: int = 1,
        start_iter: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_steps: int | None = None,
    ) -> None:
        if num_devices < 1 or world_size < 1 or not 0 <= rank < world_size or start_iter < 0:
            raise ValueError(
                f"invalid sampler setup: num_devices={num_devices}, rank={rank}, "
                f"world_size={world_size}, start_iter={start_iter}"
            )
        self.num_devices = num_devices
        self.start_iter = start_iter
        self.rank = rank
        self.world_size = world_size
        self.num_steps = num_steps

    def __iter__(self) -> Iterator[int]:
        step = self.start_iter
        while self.num_steps is None or step < self.num_steps:
            first = (step * self.world_size + self.rank) * self.num_devices
            yield from range(first, first + self.num_devices)
            step += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("an endless TrainSampler has no length; pass num_steps")
        return max(0, self.num_steps - self.start_iter) * self.num_devices


def build_train_loader(
    dataset: Any,
    num_devices: int = 1,
    workers: int = 0,
    seed: int | None = None,
    *,
    start_iter: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_steps: int | None = None,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """Loader yielding, per step, a list of ``num_devices`` per-device batch dicts.

    Args:
        dataset: a :class:`~mit_semseg.data.datasets.TrainDataset`.
        num_devices: devices driven by this process (the loader's batch size).
        workers: loader worker processes (0 = load in the main process).
        seed: seeds the dataset's stream (``dataset.set_seed``) and the loader's generator
            (so worker numpy/``random`` seeds are reproducible too); None keeps the dataset's
            seed and lets torch draw the worker seeds.
        start_iter: first step to yield (resume at step ``start_iter``).
        rank, world_size: this process's place in a distributed run; each rank gets distinct
            items from the same seeded stream.
        num_steps: stop after this step (exclusive); endless if None.
        pin_memory: pin batches for faster host-to-GPU copies.
        prefetch_factor: batches prefetched per worker (torch default if None).
    """
    generator = None
    if seed is not None:
        if hasattr(dataset, "set_seed"):
            dataset.set_seed(seed)
        generator = torch.Generator()
        generator.manual_seed(int(seed) % 2**63)
    sampler = TrainSampler(num_devices, start_iter, rank, world_size, num_steps)
    extra: dict[str, Any] = {}
    if workers > 0 and prefetch_factor is not None:
        extra["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_size=num_devices,
        sampler=sampler,
        collate_fn=user_scattered_collate,
        num_workers=workers,
        worker_init_fn=worker_init_fn,
        generator=generator,
        pin_memory=pin_memory,
        drop_last=True,
        **extra,
    )


def shard_indices(num_items: int, rank: int, world_size: int) -> range:
    """Contiguous share of ``range(num_items)`` for ``rank`` out of ``world_size``.

    Shares differ in size by at most one and cover every item exactly once; a rank with
    nothing to do (more ranks than items) gets an empty range rather than an error.
    """
    if world_size < 1 or not 0 <= rank < world_size or num_items < 0:
        raise ValueError(f"invalid shard: num_items={num_items}, rank={rank}, "
                         f"world_size={world_size}")
    return range(num_items * rank // world_size, num_items * (rank + 1) // world_size)
