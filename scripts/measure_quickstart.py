"""Measures the README's two Quick-start commands: wall time and CPU time of each, and the machine.

    python3 scripts/measure_quickstart.py                      # in this clone, as it is
    python3 scripts/measure_quickstart.py --clone /tmp/fresh   # in a fresh clone (no .venv/ yet:
                                                               # includes creating it and pip)
    python3 scripts/measure_quickstart.py --only tests --serial-tests   # pytest-xdist's gain

It runs ``bash scripts/demo.sh`` and then ``bash scripts/test.sh`` (the README's order), prints
their output as it comes and, at the end, one line per command: wall seconds, CPU seconds
(user + system of every process the command started and waited for, from getrusage) and the
part spent before the real work (choosing/creating the environment and pip: for the demo the
time until its "generating the synthetic dataset" step, for the tests the wall time minus what
pytest reports). The machine line gives the CPU model, the cores this process may use, whether
the CPU has AMX and the load average before and after, so a busy machine shows. The last line
gives the disk space of the clone's ``.venv/`` (when the commands made one) and the part of it
that only CUDA uses (the NVIDIA libraries and Triton that PyPI's PyTorch build for Linux
brings); ``--env-size DIR`` measures an existing environment and runs nothing. Standard
library only: it runs with the system's python3 before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "demo": ["bash", "scripts/demo.sh"],
    "tests": ["bash", "scripts/test.sh"],
    # the same suite in one pytest process, the baseline for test.sh's pytest-xdist workers
    "tests-serial": ["bash", "scripts/test.sh", "-n", "0"],
}
_DEMO_WORK_STARTS = re.compile(r"^=== \[\s*(\d+)s\] generating the synthetic dataset")
# pytest's closing line, with or without -q: "==== 530 passed, 2 skipped in 1304.02s (0:21:44) ===="
_PYTEST_SECONDS = re.compile(r"\d+ (?:passed|failed)\b.* in (\d+(?:\.\d+)?)s\b")


def machine() -> dict:
    """CPU model, usable cores, AMX, memory and load: what makes timings comparable."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory_gib = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory_gib = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    return {
        "cpu": model,
        "cores": cores,
        "amx": "amx_tile" in flags,
        "memory_gib": memory_gib,
        "system": platform.platform(),
        "load_before": os.getloadavg()[0],
    }


# site-packages entries that PyTorch's CUDA build installs for CUDA alone: nvidia-* (cuBLAS,
# cuDNN, NCCL...), cuda-* (runtime bindings) and triton (GPU kernel compiler)
_CUDA_ONLY_PREFIXES = ("nvidia", "cuda", "triton")


def _disk_bytes(path: Path, seen: set) -> int:
    """Disk space used by ``path`` and what is below it, as du counts it (each file once)."""
    total = 0
    for folder, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            try:
                info = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def environment_size(prefix: Path) -> dict:
    """Bytes of disk used by the Python environment at ``prefix``, and by its CUDA-only
    packages (:data:`_CUDA_ONLY_PREFIXES`)."""
    seen: set = set()
    cuda = sum(_disk_bytes(entry, seen) for entry in prefix.glob("lib*/python*/site-packages/*")
               if entry.name.lower().startswith(_CUDA_ONLY_PREFIXES))
    total = cuda + _disk_bytes(prefix, seen)  # the CUDA files are counted once, above
    return {"path": str(prefix), "total_bytes": total, "cuda_only_bytes": cuda}


def format_environment(size: dict) -> str:
    return (f"Environment {size['path']}: {size['total_bytes'] / 2**30:.1f} GiB, of which "
            f"{size['cuda_only_bytes'] / 2**30:.1f} GiB CUDA-only packages (nvidia-*, cuda-*, "
            "triton)")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(name: str, cwd: Path, log_dir: Path) -> dict:
    """Runs one command, echoing and logging its output; returns its timings."""
    log_path = log_dir / f"{name}.log"
    cpu_before, start = children_cpu_seconds(), time.monotonic()
    work_start = None
    pytest_seconds = None
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(COMMANDS[name], cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            if work_start is None and (match := _DEMO_WORK_STARTS.match(line)):
                work_start = float(match[1])
            if match := _PYTEST_SECONDS.search(line):
                pytest_seconds = float(match[1])
        returncode = proc.wait()
    wall = time.monotonic() - start
    setup = work_start if work_start is not None else (
        wall - pytest_seconds if pytest_seconds is not None else None)
    return {
        "command": " ".join(COMMANDS[name]),
        "returncode": returncode,
        "wall_s": round(wall, 1),
        "cpu_s": round(children_cpu_seconds() - cpu_before, 1),
        "setup_s": round(setup, 1) if setup is not None else None,
        "log": str(log_path),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clone", type=Path, metavar="DIR",
                        help="git clone this repository into DIR (must not exist) and run there")
    parser.add_argument("--only", choices=["demo", "tests"], help="run one of the two commands")
    parser.add_argument("--serial-tests", action="store_true",
                        help="also run the tests in one pytest process (test.sh -n 0), after "
                             "test.sh, to compare")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument("--env-size", type=Path, metavar="DIR",
                        help="only measure the disk space of the Python environment DIR (e.g. "
                             ".venv) and its CUDA-only part; runs no command")
    args = parser.parse_args()
    if args.env_size:
        print(format_environment(environment_size(args.env_size)))
        return 0
    cwd = REPO_ROOT
    if args.clone:
        subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(args.clone)], check=True)
        cwd = args.clone.resolve()
    log_dir = cwd / "quickstart_logs"
    log_dir.mkdir(exist_ok=True)
    info = machine()
    results = {}
    names = [n for n in ("demo", "tests") if args.only in (None, n)]
    for name in names + (["tests-serial"] if args.serial_tests else []):
        results[name] = run(name, cwd, log_dir)
    info["load_after"] = os.getloadavg()[0]
    busy = info["load_before"] > 0.5 * info["cores"]
    print(f"\nMachine: {info['cpu']}, {info['cores']} cores usable, "
          f"AMX {'yes' if info['amx'] else 'no'}, {info['memory_gib']} GiB; "
          f"load average {info['load_before']:.1f} before, {info['load_after']:.1f} after"
          + (" (the machine was busy: times are higher than on an idle one)" if busy else ""))
    print(f"Clone: {cwd}")
    for r in results.values():
        setup = f", of which {r['setup_s']:.0f} s setup (environment + pip)" \
            if r["setup_s"] is not None else ""
        print(f"{r['command']:<28} wall {r['wall_s']:7.1f} s{setup}; CPU {r['cpu_s']:7.1f} s; "
              f"exit {r['returncode']}")
    if "tests" in results and "tests-serial" in results:
        ratio = results["tests"]["wall_s"] / results["tests-serial"]["wall_s"]
        print(f"test.sh (pytest-xdist) / test.sh -n 0 (serial), wall: {ratio:.2f}x")
    venv = cwd / ".venv"
    if venv.is_dir():
        info["environment"] = environment_size(venv)
        print(format_environment(info["environment"]))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    return max((r["returncode"] for r in results.values()), default=0)


if __name__ == "__main__":
    sys.exit(main())
