"""The examples of docs/models.md run, so the page cannot drift from the code."""

import re
from pathlib import Path

from mit_semseg.models import ENCODERS, build_segmentation_model

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def python_block(heading):
    """The first ```python block after ``heading`` in docs/models.md."""
    text = DOC.read_text()
    section = text[text.index(heading):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block after {heading!r} in {DOC}"
    return match.group(1)


def test_add_your_own_encoder_example_runs(scratch_registries):
    namespace = {}
    exec(compile(python_block("## Add your own encoder"), str(DOC), "exec"), namespace)
    assert "tiny" in ENCODERS
    # What the page promises beyond its own asserts: the registry gave the encoder the
    # original's checkpoint layout, and each decoder kind sits at the map it declares.
    model = build_segmentation_model("tiny", "upernet_lite", num_class=5)
    assert {"stage1.1._tmp_running_mean", "stage1.1._running_iter"} <= set(
        model.encoder.state_dict())
    assert model.output_stride == 2
    assert build_segmentation_model("tiny", "c1", num_class=5).output_stride == 4
