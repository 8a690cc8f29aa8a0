"""The README demo end to end (without pip install): train briefly on CPU, reach the target mIoU,
print every output, and the numbers the README quotes are the ones the demo prints."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
from eval_fixtures import REPO_ROOT, load_script

# where the demo's printed scores are quoted, as the demo prints them
QUOTING_DOCS = [REPO_ROOT / "README.md", REPO_ROOT / "docs" / "evaluation.md",
                REPO_ROOT / "docs" / "training.md"]
SCORE_LINE = re.compile(r"Validation mean IoU: (\d\.\d{4}), pixel accuracy: (\d+\.\d{2})%")
# Float rounding differs between CPUs (kernels chosen by ISA) and training amplifies it: the
# config's seed and two others gave mIoU 0.803, 0.797, 0.817 (pixel accuracy 94.4, 94.2, 94.8%)
# on one machine, so another CPU's run may differ by about that much. The docs say so.
MIOU_TOLERANCE, ACCURACY_TOLERANCE = 0.025, 1.0


def test_the_docs_quote_the_demo_scores_in_the_printed_format():
    # the fast half of the check below: every quoting file has a score line to compare
    for path in QUOTING_DOCS:
        assert SCORE_LINE.search(path.read_text(encoding="utf-8")), path


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_reaches_target_miou_and_prints_what_the_docs_quote(tmp_path):
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        DEMO_SKIP_INSTALL="1",
        DEMO_DATA=str(tmp_path / "data"),
        DEMO_CKPT=str(tmp_path / "ckpt"),
        DEMO_OUT=str(tmp_path / "out"),
    )
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "demo.sh")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ckpt" / "eval_metrics.json").read_text())
    print(f"demo: {elapsed:.0f}s, mIoU {metrics['mean_iou']:.4f}")
    summary = load_script("scripts/demo_summary.py")
    assert metrics["mean_iou"] >= summary.TARGET_MIOU
    printed = proc.stdout.splitlines()
    # the scores printed are eval.py's, and every file written is listed
    assert summary.score_line(tmp_path / "ckpt" / "eval_metrics.json") in printed
    for folder in ("data", "ckpt", "out"):
        for entry in summary.describe(tmp_path / folder):
            assert f"    {entry}" in printed, entry
    assert "    training_curves.png" in printed
    assert list((tmp_path / "out").glob("*.png"))
    # the docs quote these scores
    miou, accuracy = SCORE_LINE.search(proc.stdout).groups()
    for path in QUOTING_DOCS:
        quoted = SCORE_LINE.findall(path.read_text(encoding="utf-8"))
        assert quoted, f"{path} quotes no demo score"
        for doc_miou, doc_accuracy in quoted:
            assert abs(float(doc_miou) - float(miou)) <= MIOU_TOLERANCE, (path, miou)
            assert abs(float(doc_accuracy) - float(accuracy)) <= ACCURACY_TOLERANCE, \
                (path, accuracy)
