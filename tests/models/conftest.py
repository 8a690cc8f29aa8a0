import json
from pathlib import Path

import pytest

from mit_semseg.models import DECODERS, ENCODERS

# The original's state-dict keys and shapes, recorded from mit-semseg 1.0.0, travel with the
# tests, so that a bare clone checks them.
REFERENCE_FILE = Path(__file__).resolve().parent / "data" / "upstream_state_dict_keys.json"


@pytest.fixture(scope="session")
def upstream_reference() -> dict:
    """The original's state-dict keys/shapes and recorded facts."""
    if not REFERENCE_FILE.is_file():
        pytest.fail(f"reference file {REFERENCE_FILE} is missing")
    return json.loads(REFERENCE_FILE.read_text())


@pytest.fixture
def scratch_registries(monkeypatch):
    """Registrations made by a test stay out of the registries the other tests see."""
    for registry in (ENCODERS, DECODERS):
        monkeypatch.setattr(registry, "_builders", dict(registry._builders))
