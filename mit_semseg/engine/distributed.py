"""The process group of a ``torchrun`` job, as one small object used by train, eval and tests.

:func:`init_distributed` reads the variables ``torchrun`` sets and joins the group; without
them, or with ``WORLD_SIZE=1``, it returns the single-process context (rank 0 of 1), whose
collectives are no-ops. :func:`cleanup_distributed` leaves the group at the end of a successful
run. This module is the only place the package reads the launcher's environment:

* ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``GROUP_RANK``: this process' place in the job
  (set by torchrun for every worker, on every node; ``GROUP_RANK`` numbers the nodes);
* ``MASTER_ADDR``, ``MASTER_PORT``: where the process group meets (set by torchrun; with the
  c10d rendezvous it picks them on the first node);
* ``TORCHELASTIC_RESTART_COUNT``: how many times torchrun restarted the workers after a
  failure (``--max-restarts``); > 0 makes ``train.py`` resume from ``DIR/checkpoint_last.pth``;
* ``TORCHELASTIC_RUN_ID``: the rendezvous id (``--rdzv-id``), which tells a lock left by an
  earlier incarnation of the same job from a lock held by another job;
* ``TORCHELASTIC_USE_AGENT_STORE``: ``True`` when torchrun's agent serves the store at
  ``MASTER_ADDR:MASTER_PORT`` (otherwise rank 0 serves it).

The synchronised BatchNorm layer for DDP is a model component and lives in
:mod:`mit_semseg.nn.distributed_batchnorm`.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "cleanup_distributed", "init_distributed", "launched_by_torchrun"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a ``torchrun`` job (rank 0 of 1 when not distributed).

    The collectives (:meth:`gather`, :meth:`mean`, :meth:`max`, :meth:`barrier`) must be called
    by every rank in the same order; in a single process they return their input.

    Attributes:
        rank, world_size, local_rank: as torchrun numbers the workers (``RANK`` is global over
            all nodes, ``LOCAL_RANK`` counts on this node).
        node_rank: the node (torchrun agent) this process runs on, ``0..nnodes-1``.
        restart_count: times torchrun restarted the workers of this job (0 on the first run).
        run_id: torchrun's rendezvous id (``""`` outside torchrun).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    node_rank: int = 0
    restart_count: int = 0
    run_id: str = ""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0

    def gather(self, obj: Any) -> list[Any]:
        """One picklable object per rank, indexed by rank (``[obj]`` when not distributed)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise mean of a floating-point tensor over the ranks (a new tensor)."""
        values = values.detach().clone()
        if self.distributed:
            dist.all_reduce(values)
            values /= self.world_size
        return values

    def max(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise maximum of a tensor over the ranks (a new tensor)."""
        values = values.detach().clone()
        if self.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return values

    def barrier(self) -> None:
        """Wait until every rank got here."""
        if self.distributed:
            dist.barrier()


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name, "")
    if value == "":
        if default is None:
            raise ValueError(f"environment variable {name} is not set; start the job with torchrun")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def launched_by_torchrun() -> bool:
    """This process is one of several of a torchrun job (``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def _job_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store:
    """The key-value store the ranks meet in, at ``MASTER_ADDR:MASTER_PORT``, with a key prefix
    per torchrun restart.

    Under ``torchrun`` (``TORCHELASTIC_USE_AGENT_STORE=True``) the store is served by the
    agent and keeps the keys of earlier attempts: in torch 2.14, when a worker takes a moment
    to exit after a failure, the restarted workers read the dead workers' addresses and fail
    (gloo: "connectFullMesh failed ... Connection refused"). The prefix keeps the attempts
    apart. Outside torchrun's agent, rank 0 serves the store, as ``env://`` does.
    """
    agent_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], _env_int("MASTER_PORT"), world_size,
                          is_master=not agent_serves and rank == 0, timeout=timeout)
    return dist.PrefixStore(f"mit_semseg/attempt_{_env_int('TORCHELASTIC_RESTART_COUNT', 0)}",
                            store)


def init_distributed(backend: str = "auto", use_cuda: bool = False,
                     timeout_s: float = 1800.0) -> DistContext:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1.

    Args:
        backend: ``"auto"`` (nccl with CUDA, gloo otherwise), ``"nccl"`` or ``"gloo"``.
        use_cuda: the processes run on CUDA devices; each then uses ``cuda:LOCAL_RANK``.
        timeout_s: collective timeout, so that a dead rank cannot hang the others forever.

    Raises:
        ValueError: a variable is not an integer, or nccl without CUDA.
        RuntimeError: ``LOCAL_RANK`` has no GPU, or ``MASTER_ADDR``/``MASTER_PORT`` are missing.
    """
    # torchrun sets both for every worker, also with one process (--max-restarts)
    elastic = {"restart_count": _env_int("TORCHELASTIC_RESTART_COUNT", 0),
               "run_id": os.environ.get("TORCHELASTIC_RUN_ID", "")}
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistContext(**elastic)
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", rank)
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if backend == "nccl" and not use_cuda:
        raise ValueError("DIST.backend 'nccl' needs CUDA devices; use 'gloo' on the CPU")
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s)")
    if not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={world_size} but {missing} not set; use torchrun")
        if use_cuda:
            torch.cuda.set_device(local_rank)
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(backend, store=_job_store(rank, world_size, timeout), rank=rank,
                                world_size=world_size, timeout=timeout)
        logger.info("joined the %s process group: rank %d of %d", backend, rank, world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank,
                       node_rank=_env_int("GROUP_RANK", 0), **elastic)


def cleanup_distributed(wait_for_peers: bool = True) -> None:
    """Leave the default process group, if any, once every rank got here.

    DDP wrappers sit in reference cycles that keep the process group alive; freed only at
    interpreter exit, after the group is gone, gloo's threads can abort the process (SIGABRT).
    So cycles are collected first, and the barrier keeps a fast rank from tearing the group
    down under a slow one. After an error, pass ``wait_for_peers=False``: the barrier could
    wait for a rank that died or failed differently.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()
