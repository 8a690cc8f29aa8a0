import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO_ROOT.parent / "shared" / "reference"


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
