import json

import pytest

from .conftest import REFERENCE_FILE, SHARED_REFERENCE_FILE


def test_bundled_reference_equals_the_shared_one():
    if not SHARED_REFERENCE_FILE.is_file():
        pytest.skip(f"{SHARED_REFERENCE_FILE} not present (only in the development workspace)")
    bundled = json.loads(REFERENCE_FILE.read_text())
    shared = json.loads(SHARED_REFERENCE_FILE.read_text())
    assert bundled == shared

