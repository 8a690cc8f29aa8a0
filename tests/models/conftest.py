import json
import os
from pathlib import Path

import pytest

# ../shared/reference next to the repository (as in CI); MIT_SEMSEG_REFERENCE_DIR overrides it.
REFERENCE_DIR = Path(os.environ.get("MIT_SEMSEG_REFERENCE_DIR")
                     or Path(__file__).resolve().parents[2].parent / "shared" / "reference")
REFERENCE_FILE = REFERENCE_DIR / "upstream_state_dict_keys.json"


@pytest.fixture(scope="session")
def upstream_reference() -> dict:
    """The original's state-dict keys/shapes and recorded facts (skip when the file is missing)."""
    if not REFERENCE_FILE.is_file():
        pytest.skip(f"reference file {REFERENCE_FILE} is missing (it lives in ../shared/reference)")
    return json.loads(REFERENCE_FILE.read_text())
