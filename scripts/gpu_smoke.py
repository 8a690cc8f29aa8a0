"""The checks of ``scripts/gpu_smoke.sh``: every CUDA path of mit_semseg once, in one results file.

Run it through ``bash scripts/gpu_smoke.sh`` (which finds a Python with torch and the packages
first). The checks, in order; once the time budget (``--budget``) is spent the rest are skipped:

1. environment: torch, CUDA, the GPUs, ``nvidia-smi``;
2. the CUDA-only tests (``pytest -m cuda``): GPU generators (issue 17.1), RNG restore on CUDA,
   deterministic training, SyncBN and DDP synced BN under autocast vs ``nn.BatchNorm2d``
   (channels-last too), no device synchronisation in synced BN, kill/resume == uninterrupted
   with a dropout decoder for TRAIN.amp "", fp16 and bf16;
3. ``train.py --gpus 0`` on synthetic data with TRAIN.amp "", fp16 and bf16: finite losses,
   what ``checkpoint_last.pth`` holds (scaler, one CUDA generator state), ``--resume auto``;
4. TRAIN.deterministic: two runs bitwise equal; the difference of two runs without it; the
   time per step of both;
5. ``eval.py`` and ``test.py --gpu 0`` with MODEL.fast_inference True and False;
6. ``eval_multipro.py``: CUDA contexts per process, from ``nvidia-smi`` (none in the master,
   one per worker on its own GPU);
7. with 2+ GPUs: ``--gpus 0,1`` (DataParallel + SyncBN) against ``torchrun`` (nccl), same data;
8. speed against the original 1.0.0 on the same GPU (``benchmarks/bench_train.py`` and
   ``bench_inference.py --device cuda``), when ``.upstream/`` holds it.

Exit status: 0 all ran checks passed, 1 one failed, 77 no CUDA device (nothing run).
``--device cpu`` runs the checks that can run on the CPU instead, to try the script itself
(slow; not a GPU check).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "config" / "synthetic-mobilenetv2dilated-c1_deepsup.yaml"
EXIT_FAILED, EXIT_NO_CUDA = 1, 77
RESULTS_NAME = "gpu_smoke_results.md"
LOG_NAME = "gpu_smoke.log"


# ----------------------------------------------------------------------------- results
@dataclass
class Check:
    """One check's outcome: ``status`` is PASS, FAIL or SKIP."""

    name: str
    status: str
    seconds: float
    details: list[str] = field(default_factory=list)


class Results:
    """The results file, rewritten (atomically) after every check, so that a run cut short
    still leaves what it found."""

    def __init__(self, path: Path, header: list[str]):
        self.path, self.header, self.checks = path, header, []

    def add(self, check: Check) -> None:
        self.checks.append(check)
        print(f"[{check.status}] {check.name} ({check.seconds:.0f} s)", flush=True)
        for line in check.details:
            print(f"    {line}", flush=True)
        self.write()

    @property
    def failed(self) -> bool:
        return any(c.status == "FAIL" for c in self.checks)

    def write(self, footer: Iterable[str] = ()) -> None:
        lines = [*self.header, "", "| check | result | seconds |", "|---|---|---|"]
        lines += [f"| {c.name} | {c.status} | {c.seconds:.0f} |" for c in self.checks]
        for check in self.checks:
            lines += ["", f"## {check.name}: {check.status}", "", *check.details]
        lines += ["", *footer]
        temp = self.path.with_name(f".{self.path.name}.tmp")
        temp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(temp, self.path)


# ----------------------------------------------------------------------------- parsing
def parse_gpu_uuids(text: str) -> dict[str, int]:
    """``nvidia-smi --query-gpu=index,uuid --format=csv,noheader`` -> {uuid: index}."""
    uuids = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            uuids[parts[1]] = int(parts[0])
    return uuids


def parse_compute_apps(text: str) -> list[tuple[int, str, float]]:
    """``nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader,
    nounits`` -> [(pid, gpu uuid, MiB)]."""
    apps = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit():
            memory = float(parts[2]) if re.fullmatch(r"[\d.]+", parts[2]) else float("nan")
            apps.append((int(parts[0]), parts[1], memory))
    return apps


def judge_contexts(contexts: dict[int, dict[int, float]], master: int, workers: set[int],
                   num_gpus_used: int) -> tuple[bool, list[str]]:
    """Whether the CUDA contexts seen during an ``eval_multipro.py`` run are as they should be:
    none in the master, at most one per process, each worker on a GPU of its own, and no
    other process of the run (a loader worker) holding one.

    Args:
        contexts: pid -> {GPU index: largest MiB seen}, over the whole run.
        master: the ``eval_multipro.py`` process.
        workers: every process started by it (directly or not) that was seen.
        num_gpus_used: how many GPUs the run was given (= evaluation workers).
    """
    lines, ok = [], True
    for pid in sorted(contexts):
        gpus = ", ".join(f"GPU {g}: {m:.0f} MiB" for g, m in sorted(contexts[pid].items()))
        role = "master" if pid == master else "worker" if pid in workers else "other process"
        lines.append(f"- pid {pid} ({role}): {gpus}")
    if master in contexts:
        ok = False
        lines.append("FAIL: the master process holds a CUDA context")
    ours = {pid: gpus for pid, gpus in contexts.items() if pid in workers}
    if any(len(gpus) > 1 for gpus in ours.values()):
        ok = False
        lines.append("FAIL: a worker holds contexts on several GPUs (a stray one on GPU 0?)")
    if len(ours) != num_gpus_used:
        ok = False
        lines.append(f"FAIL: {len(ours)} process(es) of the run hold a context, expected "
                     f"{num_gpus_used} (one evaluation worker per GPU, none in loader workers)")
    on = sorted(g for gpus in ours.values() for g in gpus)
    if on != sorted(set(on)):
        ok = False
        lines.append(f"FAIL: several workers on one GPU: {on}")
    return ok, lines


def junit_outcomes(path: Path) -> list[tuple[str, str, str]]:
    """(test id, PASS/FAIL/SKIP, message) for every test case of a pytest junit XML file."""
    outcomes = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        status, message = "PASS", ""
        for tag, label in (("failure", "FAIL"), ("error", "FAIL"), ("skipped", "SKIP")):
            node = case.find(tag)
            if node is not None:
                status, message = label, (node.get("message") or "").splitlines()[0][:200] \
                    if node.get("message") else ""
                break
        outcomes.append((name, status, message))
    return outcomes


_STEP_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*Epoch: \[(\d+)\]\[(\d+)/(\d+)\]")


def seconds_per_step(log_text: str) -> float | None:
    """Mean wall time per training step between the first and last ``Epoch: [e][s/N]`` lines
    of a ``log.txt`` written with ``TRAIN.disp_iter 1``."""
    stamps = []
    for line in log_text.splitlines():
        match = _STEP_LINE.match(line)
        if match:
            when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            epoch, step, per_epoch = (int(g) for g in match.groups()[1:])
            stamps.append((when, (epoch - 1) * per_epoch + step))
    if len(stamps) < 2 or stamps[-1][1] == stamps[0][1]:
        return None
    return (stamps[-1][0] - stamps[0][0]) / (stamps[-1][1] - stamps[0][1])


def max_weight_difference(run_a: Path, run_b: Path, epoch: int) -> float:
    """Largest absolute difference between two runs' ``{encoder,decoder}_epoch_N.pth``."""
    import torch

    worst = 0.0
    for part in ("encoder", "decoder"):
        a = torch.load(run_a / f"{part}_epoch_{epoch}.pth", weights_only=True)
        b = torch.load(run_b / f"{part}_epoch_{epoch}.pth", weights_only=True)
        if a.keys() != b.keys():
            return math.inf
        for key in a:
            worst = max(worst, (a[key].double() - b[key].double()).abs().max().item())
    return worst


# ----------------------------------------------------------------------------- running
class Runner:
    """Subprocesses with a time limit, their output appended to the log file."""

    def __init__(self, log_path: Path, deadline: float):
        self.log_path, self.deadline = log_path, deadline
        self.env = dict(os.environ, PYTHONUNBUFFERED="1",
                        PYTHONPATH=os.pathsep.join(filter(None, [
                            str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])))

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, args: list[str], timeout: float = 300, cwd: Path = REPO_ROOT
            ) -> tuple[int, str]:
        """``(exit status, output)``; 124 when it ran past ``timeout``."""
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n$ {' '.join(args)}\n")
        try:
            proc = subprocess.run(args, cwd=cwd, env=self.env, capture_output=True, text=True,
                                  timeout=max(1.0, min(timeout, self.left() + 30)))
            code, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            code = 124
            output = "".join(x.decode() if isinstance(x, bytes) else (x or "")
                             for x in (exc.stdout, exc.stderr)) + "\n[timed out]"
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(output + f"\n[exit {code}]\n")
        return code, output

    def python(self, *args: str, timeout: float = 300) -> tuple[int, str]:
        return self.run([sys.executable, *args], timeout=timeout)


def _tail(text: str, lines: int = 15) -> list[str]:
    return ["```", *text.strip().splitlines()[-lines:], "```"]


class Smoke:
    """The checks; each method returns ``(ok, details)`` or raises ``_Skip``."""

    def __init__(self, runner: Runner, work: Path, num_gpus: int, on_cpu: bool = False):
        self.runner, self.work, self.num_gpus, self.on_cpu = runner, work, num_gpus, on_cpu
        self.device = "cpu" if on_cpu else "0"  # --gpus of a one-device run
        self.data = work / "data"
        self.runs: dict[str, Path] = {}

    def _needs_gpu(self, what: str) -> None:
        if self.on_cpu:
            raise _Skip(f"--device cpu: {what} needs a GPU")

    # -- helpers
    def train_args(self, out: Path, gpus: str, **keys: str) -> list[str]:
        from_data = {
            "DIR": str(out), "DATASET.root_dataset": str(self.data),
            "DATASET.list_train": str(self.data / "training.odgt"),
            "DATASET.list_val": str(self.data / "validation.odgt"),
            "DATASET.imgSizes": "(96,128)", "DATASET.imgMaxSize": "160",
            "MODEL.arch_decoder": "ppm_deepsup",  # dropout in both heads
            "TRAIN.num_epoch": "2", "TRAIN.epoch_iters": "10", "TRAIN.batch_size_per_gpu": "4",
            "TRAIN.workers": "2", "TRAIN.disp_iter": "1", "TRAIN.checkpoint_every": "5",
            "VAL.checkpoint": "epoch_2.pth", "TEST.checkpoint": "epoch_2.pth",
            "VAL.workers": "2", "TEST.workers": "2", **keys}
        return ["--cfg", str(CONFIG), "--gpus", gpus,
                *[token for pair in from_data.items() for token in pair]]

    def train(self, name: str, gpus: str | None = None, launcher: list[str] | None = None,
              **keys: str) -> tuple[Path, int, str]:
        out, gpus = self.work / name, gpus or self.device
        code, output = self.runner.run([*(launcher or [sys.executable]), "train.py",
                                        *self.train_args(out, gpus, **keys)])
        self.runs[name] = out
        return out, code, output

    # -- the checks
    def data_ready(self) -> tuple[bool, list[str]]:
        code, output = self.runner.python("-m", "mit_semseg.data.synthetic", "--out",
                                          str(self.data), "--num-train", "40", "--num-val", "12")
        return code == 0, [f"synthetic data in {self.data}"] + ([] if code == 0
                                                                 else _tail(output))

    def cuda_tests(self) -> tuple[bool, list[str]]:
        self._needs_gpu("pytest -m cuda")
        junit = self.work / "cuda_tests.xml"
        code, output = self.runner.python("-m", "pytest", "-q", "-m", "cuda", "-p",
                                          "no:cacheprovider", f"--junitxml={junit}",
                                          "--timeout=240", "tests", timeout=420)
        if not junit.is_file():
            return False, ["pytest wrote no junit file"] + _tail(output)
        outcomes = junit_outcomes(junit)
        counts = {s: sum(1 for _, st, _ in outcomes if st == s) for s in ("PASS", "FAIL", "SKIP")}
        lines = [f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
                 f"(exit {code})", ""]
        lines += [f"- {status} {name}" + (f": {message}" if message else "")
                  for name, status, message in outcomes]
        return code == 0 and counts["FAIL"] == 0 and counts["PASS"] > 0, lines

    def training(self, amp: str) -> tuple[bool, list[str]]:
        import torch

        if amp == "fp16":
            self._needs_gpu("TRAIN.amp fp16")
        out, code, output = self.train(f"train_amp_{amp or 'fp32'}", **{"TRAIN.amp": amp})
        if code != 0:
            return False, [f"train.py --gpus {self.device} TRAIN.amp '{amp}' exited {code}"
                           ] + _tail(output)
        lines, ok = [], True
        history = torch.load(out / "history_epoch_2.pth", weights_only=True)["train"]
        finite = all(math.isfinite(v) for v in history["loss"])
        ok &= finite
        lines.append(f"losses {'all finite' if finite else 'NOT finite'}: first "
                     f"{history['loss'][0]:.4f}, last {history['loss'][-1]:.4f}")
        saved = torch.load(out / "checkpoint_last.pth", weights_only=True)
        cuda_states = len(saved["rng"][0]["cuda"])
        scaler = saved["scaler"]
        ok &= saved["iteration"] == 20 and cuda_states == (not self.on_cpu) and (
            scaler is not None) == (amp == "fp16")
        scale = f"scale {scaler['scale']:g}" if scaler else "none"
        lines.append(f"checkpoint_last.pth: iteration {saved['iteration']}, {cuda_states} CUDA "
                     f"generator state(s), scaler {scale}")
        step = seconds_per_step((out / "log.txt").read_text())
        if step is not None:
            lines.append(f"{1000 * step:.1f} ms per step (batch 4, 96-128 px, incl. loading)")
        code, output = self.runner.python("train.py", "--resume", "auto",
                                          *self.train_args(out, self.device,
                                                           **{"TRAIN.amp": amp}))
        resumed = code == 0 and "at iteration 20" in (out / "log.txt").read_text()
        ok &= resumed
        lines.append(f"--resume auto on the finished run: exit {code}, "
                     f"{'resumed at iteration 20' if resumed else 'DID NOT resume'}")
        return ok, lines

    def determinism(self) -> tuple[bool, list[str]]:
        baseline = self.runs.get("train_amp_fp32")
        runs = {}
        for name, deterministic in (("det_a", "True"), ("det_b", "True"), ("nondet", "False")):
            out, code, output = self.train(name, **{"TRAIN.deterministic": deterministic})
            if code != 0:
                return False, [f"{name}: train.py exited {code}"] + _tail(output)
            runs[name] = out
        det = max_weight_difference(runs["det_a"], runs["det_b"], 2)
        lines = [f"TRAIN.deterministic True, two runs: max |weight difference| {det:.3g} "
                 f"({'bitwise equal' if det == 0 else 'NOT equal'})"]
        if baseline is not None:
            nondet = max_weight_difference(baseline, runs["nondet"], 2)
            lines.append(f"TRAIN.deterministic False, two runs: max |weight difference| "
                         f"{nondet:.3g} (20 steps, lr 0.02)")
        times = {n: seconds_per_step((runs[n] / "log.txt").read_text()) for n in runs}
        if times["det_a"] and times["nondet"]:
            lines.append(f"time per step: {1000 * times['det_a']:.1f} ms deterministic, "
                         f"{1000 * times['nondet']:.1f} ms not "
                         f"({times['det_a'] / times['nondet']:.2f}x)")
        return det == 0, lines

    def eval_and_test(self) -> tuple[bool, list[str]]:
        run = self.runs.get("train_amp_fp32")
        if run is None:
            raise _Skip("needs the TRAIN.amp '' run of the training check")
        lines, ok, metrics, labels = [], True, {}, {}
        for fast in ("True", "False"):
            keys = {"MODEL.fast_inference": fast, "DATASET.imgSizes": "(96,128,160)"}
            code, output = self.runner.python("eval.py",
                                              *self.train_args(run, self.device, **keys))
            if code != 0:
                return False, [f"eval.py fast_inference {fast}: exit {code}"] + _tail(output)
            metrics[fast] = json.loads((run / "eval_metrics.json").read_text())
            out = self.work / f"test_fast_{fast}"
            code, output = self.runner.python(
                "test.py", "--imgs", str(self.data / "images" / "validation"),
                *self.train_args(run, self.device, **keys, **{"TEST.result": str(out),
                                                              "TEST.save_label": "True"}))
            if code != 0:
                return False, [f"test.py fast_inference {fast}: exit {code}"] + _tail(output)
            labels[fast] = {p.name: _read_png(p) for p in sorted((out / "labels").glob("*.png"))}
            m = metrics[fast]
            lines.append(f"fast_inference {fast}: mIoU {m['mean_iou']:.5f}, pixel accuracy "
                         f"{m['pixel_accuracy']:.5f}, {m['inference_seconds_per_image']:.4f} "
                         f"s/image; test.py wrote {len(labels[fast])} label maps")
        miou_diff = abs(metrics["True"]["mean_iou"] - metrics["False"]["mean_iou"])
        same = sum(int((labels["True"][n] == labels["False"][n]).sum()) for n in labels["True"])
        total = sum(labels["True"][n].size for n in labels["True"])
        share = same / max(total, 1)
        ok = (miou_diff <= 1e-3 and share >= 0.999 and len(labels["True"]) > 0
              and labels["True"].keys() == labels["False"].keys())
        lines.append(f"on vs off: |mIoU difference| {miou_diff:.2e}, equal test.py labels "
                     f"{100 * share:.3f}% of pixels (pass: <= 1e-3 and >= 99.9%)")
        return ok, lines

    def multipro_contexts(self) -> tuple[bool, list[str]]:
        self._needs_gpu("counting CUDA contexts")
        run = self.runs.get("train_amp_fp32")
        if run is None:
            raise _Skip("needs the TRAIN.amp '' run of the training check")
        used = min(self.num_gpus, 2)
        uuids = parse_gpu_uuids(_nvidia_smi("--query-gpu=index,uuid", "--format=csv,noheader"))
        keys = {"DATASET.imgSizes": "(300,400,500)", "DATASET.imgMaxSize": "700",
                "MODEL.fast_inference": "False"}
        args = [sys.executable, "eval_multipro.py",
                *self.train_args(run, ",".join(map(str, range(used))), **keys)]
        proc = subprocess.Popen(args, cwd=REPO_ROOT, env=self.runner.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        contexts: dict[int, dict[int, float]] = {}
        seen_children: set[int] = set()
        samples = 0
        while proc.poll() is None:
            seen_children |= descendants(proc.pid, parent_pids())
            for pid, uuid, mib in parse_compute_apps(_nvidia_smi(
                    "--query-compute-apps=pid,gpu_uuid,used_memory",
                    "--format=csv,noheader,nounits")):
                gpu = uuids.get(uuid, -1)
                contexts.setdefault(pid, {})[gpu] = max(mib, contexts.get(pid, {}).get(gpu, 0))
            samples += 1
            time.sleep(0.1)
        output = proc.stdout.read() if proc.stdout else ""
        with open(self.runner.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n$ {' '.join(args)}\n{output}\n[exit {proc.returncode}]\n")
        lines = [f"eval_multipro.py --gpus {','.join(map(str, range(used)))}: exit "
                 f"{proc.returncode}, {samples} nvidia-smi samples, processes of the run seen: "
                 f"{len(seen_children)}"]
        if proc.returncode != 0:
            return False, lines + _tail(output)
        if not set(contexts) & (seen_children | {proc.pid}):
            raise _Skip(f"nvidia-smi listed no process of this run (pids seen: "
                        f"{sorted(contexts) or 'none'}; it cannot see this container's "
                        "processes): contexts per process not checkable here")
        ok, judged = judge_contexts(contexts, proc.pid, seen_children, used)
        return ok, lines + judged

    def multi_gpu(self) -> tuple[bool, list[str]]:
        if self.num_gpus < 2:
            raise _Skip(f"{self.num_gpus} GPU(s): the DataParallel/torchrun comparison needs "
                        "two")
        keys = {"TRAIN.num_epoch": "1", "TRAIN.epoch_iters": "6", "TRAIN.lr_encoder": "1e-4",
                "TRAIN.lr_decoder": "1e-4", "TRAIN.deterministic": "True"}
        dp, code, output = self.train("dp_2gpus", "0,1", **keys)
        if code != 0:
            return False, [f"train.py --gpus 0,1 exited {code}"] + _tail(output)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_addr", "127.0.0.1", "--master_port", "29533"]
        ddp, code, output = self.train("ddp_2gpus", "0", launcher=launcher, **keys)
        if code != 0:
            return False, [f"torchrun --nproc_per_node 2 train.py exited {code}"] + _tail(output)
        diff = max_weight_difference(dp, ddp, 1)
        return diff <= 1e-4, [f"--gpus 0,1 (DataParallel + SyncBN) vs torchrun 2 x 1 GPU "
                              f"(DDP + synced BN), 6 steps at lr 1e-4: max |weight "
                              f"difference| {diff:.3g} (tolerance 1e-4)"]

    def speed(self) -> tuple[bool, list[str]]:
        self._needs_gpu("the GPU speed comparison")
        if not (REPO_ROOT / ".upstream" / "mit_semseg" / "dataset.py").is_file():
            raise _Skip("the original 1.0.0 is not in .upstream/ (carry it, or run "
                        "`bash scripts/gpu_smoke.sh --fetch-deps` where pip works)")
        lines, ok = [], True
        for script, extra in (
                ("bench_train.py", ["--models", "r50d_ppmds", "--batch", "2", "--size", "512",
                                    "--steps", "10", "--warmup", "3"]),
                ("bench_inference.py", ["--models", "r50d_ppmds", "--images", "1"])):
            code, output = self.runner.python(
                str(REPO_ROOT / "benchmarks" / script), "--device", "cuda", "--variants",
                "ours", "upstream", "--repeats", "2", "--threads", "4", "--no-write", *extra,
                timeout=300)
            ok &= code == 0
            kept = [ln for ln in output.splitlines() if ln.startswith(("|", "- ", "Machine"))]
            lines += [f"### {script} (exit {code})", "", *(kept or _tail(output)), ""]
        return ok, lines


class _Skip(Exception):
    """A check that cannot run here (its reason is reported)."""


def _read_png(path: Path):
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _nvidia_smi(*args: str) -> str:
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True,
                              timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def descendants(pid: int, parents: dict[int, int]) -> set[int]:
    """Every process below ``pid`` in a ``{pid: parent pid}`` table."""
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def parent_pids() -> dict[int, int]:
    """``{pid: parent pid}`` of every process, from /proc/<pid>/stat."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # the command name (field 2) may hold spaces: the parent pid follows its ")"
            table[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return table


def environment(num_gpus: int) -> list[str]:
    """Lines describing the machine and the software."""
    import torch

    lines = [f"- host: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}",
             f"- python: {sys.executable} ({platform.python_version()}), torch "
             f"{torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
             f"{torch.backends.cudnn.version() if num_gpus else None}"]
    for index in range(num_gpus):
        props = torch.cuda.get_device_properties(index)
        lines.append(f"- GPU {index}: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
                     f"compute capability {props.major}.{props.minor}")
    smi = _nvidia_smi("--query-gpu=index,name,driver_version,memory.used,memory.total",
                      "--format=csv,noheader")
    lines.append("- nvidia-smi: " + ("; ".join(smi.strip().splitlines()) if smi.strip()
                                     else "not available"))
    upstream = REPO_ROOT / ".upstream" / "mit_semseg"
    lines.append(f"- original 1.0.0 in .upstream/: {'yes' if upstream.is_dir() else 'no'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_smoke_out", help="folder of the results file")
    parser.add_argument("--budget", type=float, default=450,
                        help="seconds; checks that would start later are skipped")
    parser.add_argument("--dry", action="store_true",
                        help="describe the machine and the plan, run no check")
    parser.add_argument("--only", nargs="+", metavar="CHECK",
                        help="run only the checks whose names contain one of these words")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: run what can run on the CPU, to try this script itself")
    args = parser.parse_args(argv)
    start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    header = ["# GPU smoke test (`bash scripts/gpu_smoke.sh`)", "",
              f"Started {datetime.now().isoformat(timespec='seconds')}, budget "
              f"{args.budget:.0f} s.", "", *environment(num_gpus)]
    results = Results(out / RESULTS_NAME, header)
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_") as tmp:
        smoke = Smoke(Runner(out / LOG_NAME, start + args.budget), Path(tmp), num_gpus,
                      on_cpu=args.device == "cpu")
        checks: list[tuple[str, float, Callable[[], tuple[bool, list[str]]]]] = [
            ("synthetic data", 20, smoke.data_ready),
            ("CUDA-only tests (pytest -m cuda)", 60, smoke.cuda_tests),
            *[(f"train.py TRAIN.amp '{amp}' + --resume auto", 20,
               lambda amp=amp: smoke.training(amp)) for amp in ("", "fp16", "bf16")],
            ("TRAIN.deterministic", 45, smoke.determinism),
            ("eval.py / test.py, fast_inference on and off", 30, smoke.eval_and_test),
            ("eval_multipro.py CUDA contexts per process", 15, smoke.multipro_contexts),
            ("2 GPUs: DataParallel vs torchrun", 40, smoke.multi_gpu),
            ("speed vs original 1.0.0", 120, smoke.speed),
        ]
        if args.only:
            checks = [c for c in checks if any(o.lower() in c[0].lower() for o in args.only)]
        if num_gpus == 0 and args.device == "cuda":
            results.write(["no CUDA device: nothing was run (exit 77).",
                           "Planned: " + "; ".join(name for name, _, _ in checks) + "."])
            print("gpu_smoke: no CUDA device: nothing run", file=sys.stderr)
            return EXIT_NO_CUDA
        if args.dry:
            results.write(["--dry: nothing was run. Planned: "
                           + "; ".join(name for name, _, _ in checks) + "."])
            return 0
        for name, estimate, check in checks:
            began = time.monotonic()
            if smoke.runner.left() < estimate:
                results.add(Check(name, "SKIP", 0, [f"time budget: {smoke.runner.left():.0f} s "
                                                    f"left, needs about {estimate:.0f} s"]))
                continue
            try:
                ok, details = check()
                status = "PASS" if ok else "FAIL"
            except _Skip as reason:
                status, details = "SKIP", [str(reason)]
            except Exception as exc:  # a broken check is a failure, the others still run
                status, details = "FAIL", [f"{type(exc).__name__}: {exc}"]
            results.add(Check(name, status, time.monotonic() - began, details))
        total = time.monotonic() - start
        results.write([f"Finished in {total:.0f} s: "
                       f"{'SOME CHECKS FAILED' if results.failed else 'no check failed'}; "
                       f"full output in {LOG_NAME}."])
    return EXIT_FAILED if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
