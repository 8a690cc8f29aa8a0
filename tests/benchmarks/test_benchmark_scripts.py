"""Every benchmark script runs end to end on tiny settings (``-m slow``).

The timings mean nothing at these sizes; what is checked is that each script still runs with
the package as it is now (a renamed helper once broke ``bench_memory.py`` unnoticed), prints
its table with the machine line, and leaves ``benchmarks/RESULTS.md`` alone with ``--no-write``.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS = REPO_ROOT / "benchmarks" / "RESULTS.md"

SMALL_RUNS = {
    "inference": ["--models", "r18d_c1ds", "--variants", "ours", "upstream", "ours_plain",
                  "--images", "1", "--min-size", "64", "--max-size", "96", "--repeats", "1",
                  "--threads", "1"],
    "memory": ["--models", "r18d_c1ds", "--variants", "ours", "upstream", "--sizes", "64",
               "--repeats", "1", "--threads", "1"],
    "flops": ["--models", "r18d_c1ds", "--repeats", "1", "--threads", "1", "--width", "64",
              "--height", "48", "--mm-size", "256", "--no-peer"],
    "train": ["--models", "r18d_c1ds", "--variants", "ours", "upstream", "--batch", "1",
              "--size", "64", "--steps", "1", "--warmup", "1", "--repeats", "1",
              "--threads", "1"],
    "data": ["--repeats", "1", "--steps", "2", "--images", "4", "--threads", "1"],
    "syncbn": ["--replicas", "2", "--iters", "2", "--repeats", "1", "--size", "8",
               "--batch", "4", "--channels", "8"],
    "preflight": ["--records", "20", "--full-records", "4", "--repeats", "1"],
    "checkpoint": ["--repeats", "1", "--size", "64", "--steps", "1", "--threads", "1"],
    "divergence": ["--steps", "2"],
    "int8": ["--part", "sizes", "--models", "mnv2d_c1ds", "--sizes", "96x128", "--threads", "1"],
    "winograd": ["--threads", "1", "--repeats", "1", "--shapes", "16x8x6", "32x16x5"],
    "precision": ["--part", "archs", "--archs", "r18d_c1ds", "--images", "1", "--min-size",
                  "64", "--max-size", "96", "--scales", "64", "--max-side", "128",
                  "--threads", "1"],
}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL_RUNS))
def test_benchmark_script_runs_on_tiny_settings(name, upstream_path, tmp_path):
    if name == "int8":
        from mit_semseg.deploy.int8 import int8_unavailable

        if int8_unavailable():
            pytest.skip(int8_unavailable())
    before = _digest(RESULTS)
    env = {**os.environ, "MIT_SEMSEG_UPSTREAM": str(upstream_path)}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / f"bench_{name}.py"),
         *SMALL_RUNS[name], "--no-write"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the machine line names the CPU's AMX status and the table was printed
    assert "Machine: " in result.stdout and "AMX**" in result.stdout
    assert "|---|" in result.stdout
    assert _digest(RESULTS) == before
