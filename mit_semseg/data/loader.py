"""Training data: the per-device batch streams, their loaders and their seeding.

Stream design (what makes ``--resume`` exact and torchrun equal to one process): every device
-- a GPU of a DataParallel process, a CPU replica, or a torchrun rank -- has a *global device
index* ``g`` and draws its per-device batches from its own loader, seeded from
``(seed, epoch, g)`` alone (:func:`device_batches`). A single process with K devices therefore
sees exactly the batches that K torchrun processes see, and a resumed run rebuilds the epoch's
loaders from the same seeds, starting at the first step not yet consumed.

A loader (:func:`build_train_loader`) yields, per step, a list of per-device batch dicts, each
a whole batch built by :class:`~mit_semseg.data.datasets.TrainDataset`. Its sampler hands out
item indices step by step; since an item is a pure function of ``(dataset seed, index)``, the
data of a step does not depend on the number of workers, and a loader started at step ``k``
(``start_iter=k``) yields exactly what an uninterrupted one yields from step ``k`` on.
"""

from __future__ import annotations

import contextlib
import random
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

__all__ = [
    "TrainSampler",
    "build_train_loader",
    "data_seed",
    "device_batches",
    "device_seed",
    "global_device_indices",
    "seed_cuda_generators",
    "seed_everything",
    "stop_workers",
    "user_scattered_collate",
    "worker_init_fn",
]


def user_scattered_collate(batch: list[Any]) -> list[Any]:
    """The ``collate_fn`` of every loader here: the samples (or per-device batches) as a list,
    unchanged, because their images differ in size (the original's name)."""
    return batch


def worker_init_fn(worker_id: int) -> None:
    """Seeds ``numpy`` and ``random`` of a loader worker from its torch seed.

    ``torch`` gives every worker ``base_seed + worker_id``, with ``base_seed`` drawn from the
    loader's generator, but leaves numpy and ``random`` as forked from the parent, so without
    this all workers would draw the same numbers. OpenCV's own thread pool is switched off:
    the workers already run in parallel.

    Workers ignore SIGINT and SIGTERM: a terminal's Ctrl-C and schedulers signal every process
    of the job, and a worker that died of it would fail the step the training process is
    finishing before it saves (see :mod:`mit_semseg.engine.run_control`). The training process
    ends its workers itself (:func:`stop_workers`).
    """
    info = torch.utils.data.get_worker_info()
    seed = info.seed if info is not None else torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    cv2.setNumThreads(0)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


class TrainSampler(Sampler[int]):
    """Indices of the training stream: step ``s`` takes items ``s * num_devices + d`` for
    ``d < num_devices``, from step ``start_iter`` on; it ends after step ``num_steps - 1``, or
    never if ``num_steps`` is None."""

    def __init__(self, num_devices: int = 1, start_iter: int = 0,
                 num_steps: int | None = None) -> None:
        if num_devices < 1 or start_iter < 0:
            raise ValueError(f"invalid sampler setup: num_devices={num_devices}, "
                             f"start_iter={start_iter}")
        self.num_devices = num_devices
        self.start_iter = start_iter
        self.num_steps = num_steps

    def __iter__(self) -> Iterator[int]:
        step = self.start_iter
        while self.num_steps is None or step < self.num_steps:
            yield from range(step * self.num_devices, (step + 1) * self.num_devices)
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
    sampler = TrainSampler(num_devices, start_iter, num_steps)
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


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators, the CPU one and every CUDA one.

    Every CUDA device gets the same seed here (``torch.manual_seed``); a training process then
    gives each of its GPUs a stream of its own with :func:`seed_cuda_generators`.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def data_seed(seed: int, epoch: int, device_index: int) -> int:
    """Seed of the data loader of one device for one epoch (independent of anything else)."""
    return int(np.random.SeedSequence([seed, epoch, device_index]).generate_state(1)[0])


def global_device_indices(rank: int, num_devices: int) -> list[int]:
    """Global indices of the ``num_devices`` devices of process ``rank`` (every process of a
    run drives the same number of devices)."""
    return [rank * num_devices + i for i in range(num_devices)]


def device_seed(seed: int, device_index: int) -> int:
    """Seed of the CUDA generator (dropout) of the device with global index ``device_index``.

    A spawn key keeps it apart from every :func:`data_seed`.
    """
    sequence = np.random.SeedSequence(seed, spawn_key=(device_index,))
    return int(sequence.generate_state(2, np.uint64)[0] % 2**63)


def seed_cuda_generators(seed: int, devices: Sequence[torch.device],
                         device_indices: Sequence[int]) -> None:
    """Give each CUDA device of ``devices`` its own generator seed, from ``(seed, global index)``.

    ``torch.manual_seed`` seeds every GPU alike, so the GPUs of a one-process multi-GPU run
    would draw identical dropout masks. Seeded from the global device index, a GPU draws the
    same masks whether it is one of several GPUs of a process or a torchrun rank of its own.
    CPU devices are skipped (they share the CPU generator).

    Args:
        seed: the run's base seed (``TRAIN.seed``).
        devices: this process' devices, in local order.
        device_indices: their global indices (see :func:`device_batches`).
    """
    if len(devices) != len(device_indices):
        raise ValueError(f"{len(devices)} devices but {len(device_indices)} device indices")
    cuda = [(d, g) for d, g in zip(devices, device_indices) if d.type == "cuda"]
    if not cuda:
        return
    torch.cuda.init()  # fills torch.cuda.default_generators
    for device, index in cuda:
        number = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[number].manual_seed(device_seed(seed, index))


class _PrivateRng:
    """Python/NumPy/torch-CPU generator states that are swapped in around a loader's work.

    Datasets draw their augmentations from the global generators when they run in the main
    process (``workers=0``), and a DataLoader draws its base seed from torch's global generator
    when it is started. Swapping in a private state makes each device's stream depend on its
    own seed only, and leaves the training process' generators untouched: the CPU ones are
    swapped back afterwards, and the CUDA ones (dropout on GPUs) are never read nor seeded,
    since loading runs on the CPU.
    """

    def __init__(self, seed: int) -> None:
        # the states seed_everything(seed) would give, made without touching any global
        # generator (torch.manual_seed would reseed every GPU's)
        self.state = (random.Random(seed).getstate(),
                      np.random.RandomState(seed % 2**32).get_state(),
                      torch.Generator().manual_seed(seed).get_state())

    @staticmethod
    def _capture() -> tuple:
        return random.getstate(), np.random.get_state(), torch.get_rng_state()

    @staticmethod
    def _restore(state: tuple) -> None:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        outer = self._capture()
        self._restore(self.state)
        try:
            yield
        finally:
            self.state = self._capture()
            self._restore(outer)


def stop_workers(iterator: Iterator[Any]) -> None:
    """Ends the worker processes of a DataLoader's iterator now, and waits for them.

    Torch ends them when the iterator is garbage-collected, but an exception's traceback keeps
    it alive until the interpreter exits, when torch no longer does: then multiprocessing asks
    them to stop with SIGTERM, which :func:`worker_init_fn`'s workers ignore, and waits for them
    forever (the command never exits, and they hold its stdout and stderr). Torch has no public
    call for this; its own clean-up (``_shutdown_workers``) is used, and a worker still running
    after it (busy or blocked on a file) is killed. An iterator without workers is left as is.
    """
    shut_down = getattr(iterator, "_shutdown_workers", None)
    if shut_down is None:
        return
    shut_down()  # asks the workers to finish, waits a few seconds, forgets their pids
    for worker in getattr(iterator, "_workers", ()):
        if worker.is_alive():
            worker.kill()
            worker.join()


def _next_per_device(streams: list[tuple[Iterator[Any], _PrivateRng]]
                     ) -> list[dict[str, Any]] | None:
    """One batch dict from each device's stream, or None when a stream has ended."""
    batch = []
    for iterator, rng in streams:
        with rng.active():
            item = next(iterator, None)
        if item is None:
            return None
        batch.append(item[0] if isinstance(item, (list, tuple)) else item)
    return batch


def device_batches(make_loader: Callable[[int, int, int], Iterable[Any]], seed: int,
                   device_indices: list[int], epoch: int, start_step: int = 0
                   ) -> Iterator[list[dict[str, Any]]]:
    """Yield, per step, one per-device batch dict for each of ``device_indices``.

    Each device's stream is a function of ``(seed, epoch, device index)`` alone (see the module
    docstring), whatever the process layout, the number of loader workers or the state of the
    global random generators, which this function leaves untouched (the CUDA ones included).

    Args:
        make_loader: ``make_loader(seed, local_index, start_step)`` returns an iterable of
            one device's per-device batches (each a dict, or a one-element list holding the
            dict), seeded with ``seed`` and starting at step ``start_step`` of that stream.
        seed: the run's base seed (``TRAIN.seed``).
        device_indices: the global device indices this process trains on.
        epoch: 0-based epoch; together with the device index it fixes the loader's seed.
        start_step: steps of this epoch already consumed (resuming a run).
    """
    streams = []
    try:
        for local_index, global_index in enumerate(device_indices):
            stream_seed = data_seed(seed, epoch, global_index)
            rng = _PrivateRng(stream_seed)
            with rng.active():
                streams.append((iter(make_loader(stream_seed, local_index, start_step)), rng))
        while (batch := _next_per_device(streams)) is not None:
            yield batch
    finally:  # on every way out: the end of the epoch, an error, a signal, close()
        for iterator, _ in streams:
            stop_workers(iterator)
