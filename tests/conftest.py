import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from local_http import http_server  # noqa: F401  (fixture: a local HTTP server for downloads)

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        # pytest -n N: the workers share the cores, so each worker, and every process it starts,
        # gets its share of threads instead of one per core. Tests that compare with a
        # subprocess (the original package) need both sides on the same thread count: oneDNN
        # picks other kernels for another count, which changes results by ~1e-4.
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped on a machine without a CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state, so failures reproduce."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def upstream_path() -> Path:
    """Folder of the original ``mit_semseg`` 1.0.0 (``pip --target`` install); skip if absent."""
    path = Path(os.environ.get("MIT_SEMSEG_UPSTREAM", REPO_ROOT / ".upstream"))
    if not (path / "mit_semseg" / "models" / "models.py").is_file():
        pytest.skip(
            f"original mit-semseg 1.0.0 not installed at {path}; install it with "
            "`pip install --no-deps --target .upstream mit-semseg==1.0.0`"
        )
    return path
