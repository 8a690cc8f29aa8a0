"""Synchronised BatchNorm and data-parallel wrappers.

The original package's import path ``mit_semseg.lib.nn`` re-exports these names.

* :class:`SynchronizedBatchNorm1d` / ``2d`` / ``3d``: BatchNorm synchronised across the
  replicas of :class:`DataParallelWithCallback` / :class:`UserScatteredDataParallel` (GPUs or
  CPU threads).
* :class:`DistributedSyncBatchNorm` and :func:`convert_sync_batchnorm`: the same across
  ``torch.distributed`` processes (DDP), on gloo/CPU and nccl/GPU.
"""

from .comm import SyncError
from .data_parallel import (
    UserScatteredDataParallel,
    async_copy_to,
    dict_gather,
)
from .distributed_batchnorm import (
    DistributedSyncBatchNorm,
    convert_sync_batchnorm,
    revert_sync_batchnorm,
)
from .replicate import (
    CallbackContext,
    DataParallelWithCallback,
    execute_replication_callbacks,
    patch_replication_callback,
)
from .sync_batchnorm import (
    SynchronizedBatchNorm1d,
    SynchronizedBatchNorm2d,
    SynchronizedBatchNorm3d,
    convert_model,
)

__all__ = [
    "CallbackContext",
    "DataParallelWithCallback",
    "DistributedSyncBatchNorm",
    "SyncError",
    "SynchronizedBatchNorm1d",
    "SynchronizedBatchNorm2d",
    "SynchronizedBatchNorm3d",
    "UserScatteredDataParallel",
    "async_copy_to",
    "convert_model",
    "convert_sync_batchnorm",
    "dict_gather",
    "execute_replication_callbacks",
    "patch_replication_callback",
    "revert_sync_batchnorm",
]
