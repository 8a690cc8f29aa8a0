"""Bitwise-reproducible GPU training (``TRAIN.deterministic``).

On the CPU, training is already deterministic. On CUDA three things make two identical runs
differ: TF32 (cuDNN convolutions use it by default, rounding inputs to 10-bit mantissas in a
way that depends on the algorithm picked), algorithms chosen per run (cuDNN benchmarking, cuBLAS
split-K reductions whose order depends on a workspace) and kernels that accumulate with atomic
adds (bilinear upsampling and adaptive pooling backward, NLL loss). :func:`configure_determinism`
switches TF32 off, pins cuDNN to deterministic algorithms, gives cuBLAS a fixed workspace
(``CUBLAS_WORKSPACE_CONFIG``) and turns on ``torch.use_deterministic_algorithms``, under which
the models use the matrix forms of :mod:`mit_semseg.nn.deterministic_ops` for the atomic ops.

It must run before the process' first cuBLAS call (``train.py`` calls it right after reading
the config): cuBLAS reads the workspace setting when it creates its handle.
"""

from __future__ import annotations

import logging
import os

import torch

__all__ = ["CUBLAS_WORKSPACE_CONFIG", "configure_determinism"]

logger = logging.getLogger(__name__)

# A fixed cuBLAS workspace of eight 4 MiB buffers per stream (the setting NVIDIA documents for
# reproducible results; ":16:8" would also do, with less memory and less speed).
CUBLAS_WORKSPACE_CONFIG = ":4096:8"
_REPRODUCIBLE_WORKSPACES = (":4096:8", ":16:8")


def configure_determinism(enabled: bool) -> None:
    """Make this process' CUDA computations reproducible bit for bit (``enabled``), or leave
    torch's defaults alone.

    Sets ``CUBLAS_WORKSPACE_CONFIG`` (unless it already holds a reproducible value),
    ``torch.use_deterministic_algorithms(True)``, ``cudnn.deterministic``, no cuDNN
    benchmarking, and no TF32 for matrix products and convolutions.
    """
    if not enabled:
        return
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in _REPRODUCIBLE_WORKSPACES:
        if torch.cuda.is_initialized():
            logger.warning("CUDA is already initialised: if cuBLAS has run, the workspace "
                           "setting CUBLAS_WORKSPACE_CONFIG=%s comes too late; set it in the "
                           "environment", CUBLAS_WORKSPACE_CONFIG)
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    logger.info("deterministic mode: TF32 off, deterministic algorithms, "
                "CUBLAS_WORKSPACE_CONFIG=%s", os.environ["CUBLAS_WORKSPACE_CONFIG"])
