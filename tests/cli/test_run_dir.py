"""mit_semseg.cli.run_dir: one run per DIR, a fresh start never replaces a run, and resuming
only what was trained (in process: every case here stops before a model is built, but the
--overwrite one, which trains one step)."""
# ruff: noqa: F811  (the fixtures imported below are test arguments)

import json
import logging
import os
import socket
import subprocess
import sys

import pytest
from torch import nn
from train_fixtures import CONFIG, REPO_ROOT, dataset, script_env, train_opts  # noqa: F401

from mit_semseg.cli.run_dir import (
    LOCK_NAME,
    OWNER_NAME,
    RunDirLocked,
    check_resume_config,
    find_resume_state,
    hold_run_lock,
    job_identity,
)
from mit_semseg.config import ConfigError, load_config
from mit_semseg.engine.checkpoint import LAST_CHECKPOINT, RunStamp, save_training_state
from mit_semseg.engine.distributed import DistContext

sys.path.insert(0, str(REPO_ROOT))
import train  # noqa: E402  (the script under test)

# Holds DIR's lock in another process until its stdin closes; with "fork", a forked child that
# inherited every descriptor outlives it (as data-loader workers outlive a killed run).
_HOLDER = """
import os, sys
from mit_semseg.cli.run_dir import hold_run_lock
with hold_run_lock(sys.argv[1], run_id="job-7"):
    child = os.fork() if sys.argv[2:] == ["fork"] else -1
    if child == 0:
        while os.read(0, 1):
            pass
        os._exit(0)
    print("held", child, flush=True)
    sys.stdin.read()
"""


def _holder(folder, *extra):
    """A process holding ``folder``'s lock: ``(process, pid of its forked child or -1)``."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), *extra], env=script_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    word, child = proc.stdout.readline().split()
    assert word == "held"
    return proc, int(child)


def _write_checkpoint(out, cfg, num_devices=1, run_id=""):
    """A checkpoint_last.pth as train.py writes it (tiny nets: only the format matters)."""
    save_training_state(out / LAST_CHECKPOINT, encoder=nn.Conv2d(1, 1, 1),
                        decoder=nn.Conv2d(1, 1, 1), optimizers={}, epoch=1, iteration=3,
                        history={"train": {}}, rng=[{}],
                        stamp=RunStamp(num_devices=num_devices, config=cfg.dump(),
                                       job=job_identity(cfg.dump(), run_id)))


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def main(monkeypatch, capsys):
    """train.py's ``main`` in this process: ``(exit status, stderr)``; logging restored."""
    monkeypatch.chdir(REPO_ROOT)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def call(*argv):
        code = train.main(["--cfg", str(CONFIG), "--gpus", "cpu", *argv])
        return code, capsys.readouterr().err

    yield call
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_a_second_run_in_the_same_dir_is_refused(dataset, tmp_path, main):
    out = tmp_path / "run"
    holder, _ = _holder(out)  # the first run, alive in another process
    try:
        code, err = main(*train_opts(dataset, out))
        assert (out / OWNER_NAME).exists()
    finally:
        holder.communicate("")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"train.py: error: {out} is used by another training run (pid "
                          f"{holder.pid} on {socket.gethostname()}, torchrun job 'job-7', since ")
    assert err.rstrip().endswith("give this run another DIR, or stop that run first")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # its owner took its note
    with hold_run_lock(str(out)):  # and the lock is free again
        pass


def test_a_killed_run_leaves_no_lock_even_while_its_forked_children_live(tmp_path):
    holder, child = _holder(tmp_path, "fork")
    try:
        holder.kill()  # SIGKILL: the note stays, the OS lock dies with the process
        holder.wait()
        os.kill(child, 0)  # still alive, with a copy of the lock's descriptor
        assert json.loads((tmp_path / OWNER_NAME).read_text())["pid"] == holder.pid
        with hold_run_lock(str(tmp_path), run_id="job-8"):
            assert json.loads((tmp_path / OWNER_NAME).read_text())["pid"] == os.getpid()
            with pytest.raises(RunDirLocked, match=rf"\(pid {os.getpid()} on .*, torchrun job "
                                                   r"'job-8', since "):
                with hold_run_lock(str(tmp_path)):  # another holder (here: in this process)
                    pass
        assert not (tmp_path / OWNER_NAME).exists()
    finally:
        holder.stdin.close()  # the child reads the same pipe: it ends too


def test_a_lock_whose_owner_note_is_unreadable_still_refuses(tmp_path):
    with hold_run_lock(str(tmp_path)):
        (tmp_path / OWNER_NAME).write_text("not json")
        with pytest.raises(RunDirLocked, match=f"its owner note {tmp_path / OWNER_NAME} is "
                                               "missing or unreadable"):
            with hold_run_lock(str(tmp_path)):
                pass


def test_a_changed_schedule_is_refused_and_the_dir_left_alone(dataset, tmp_path, main):
    out = tmp_path / "run"
    out.mkdir()
    opts = train_opts(dataset, out)
    _write_checkpoint(out, load_config(CONFIG, opts))
    (out / "log.txt").write_text("the first run's log\n")
    before = _snapshot(out)
    changed = opts + ["TRAIN.lr_encoder", "0.01", "TRAIN.epoch_iters", "4",
                      "TRAIN.workers", "3", "TRAIN.disp_iter", "7"]  # the last two: harmless
    code, err = main(*changed, "--resume", "auto")  # the flags may follow the overrides
    assert code == 2 and err.count("\n") == 1
    assert ("was trained with a different config: TRAIN.epoch_iters 3 -> 4; "
            "TRAIN.lr_encoder 0.02 -> 0.01; resume with the old values, or pass "
            "--allow-config-change") in err
    assert "workers" not in err and "disp_iter" not in err
    # no config.yaml, no log line, no owner note (the lock file stays, unlocked)
    assert {k: v for k, v in _snapshot(out).items() if k != LOCK_NAME} == before


def test_changes_are_accepted_on_request_and_devices_count(tmp_path, caplog):
    cfg = load_config(CONFIG)
    saved = {"config": cfg.dump(), "num_devices": 2}
    new = load_config(CONFIG, ["TRAIN.num_epoch", "8", "TRAIN.workers", "4"])
    with pytest.raises(ConfigError, match=r"TRAIN.num_epoch 5 -> 8; devices \(processes x "
                                          r"devices per process\) 2 -> 1; resume"):
        check_resume_config(saved, "ckpt.pth", new, 1, allow_config_change=False)
    check_resume_config(saved, "ckpt.pth", new, 1, allow_config_change=True)
    assert "continuing with the new one (--allow-config-change): TRAIN.num_epoch" in caplog.text
    # harmless keys only, or a file written before configs were stored: nothing to say
    check_resume_config(saved, "ckpt.pth", load_config(CONFIG, ["TRAIN.workers", "4"]), 2,
                        allow_config_change=False)
    check_resume_config({"config": ""}, "ckpt.pth", new, 1, allow_config_change=False)


def test_torchrun_restart_continues_only_what_its_own_job_wrote(tmp_path, caplog):
    cfg = load_config(CONFIG, ["DIR", str(tmp_path)])
    job = job_identity(cfg.dump(), "job-b")
    restart = DistContext(restart_count=1, run_id="job-b")
    assert find_resume_state(cfg, restart, 1, False, job) is None  # none yet
    _write_checkpoint(tmp_path, cfg, run_id="job-b")
    first_start = DistContext(run_id="job-b")
    assert find_resume_state(cfg, first_start, 1, False, job) is None  # not asked to resume
    path, saved = find_resume_state(cfg, restart, 1, False, job)
    assert path == str(tmp_path / LAST_CHECKPOINT) and saved["iteration"] == 3
    # another job's file, or one of another config: left alone (a fresh start then refuses)
    other_list = load_config(CONFIG, ["DIR", str(tmp_path), "DATASET.list_train", "b.odgt"])
    for config, run_id in ((cfg, "job-a"), (cfg, ""), (other_list, "job-b")):
        _write_checkpoint(tmp_path, config, run_id=run_id)
        caplog.clear()
        assert find_resume_state(cfg, restart, 1, False, job) is None
        assert f"{tmp_path / LAST_CHECKPOINT} was written by another job" in caplog.text
    # asked to resume, it compares the configs as --resume does
    resume = load_config(CONFIG, ["DIR", str(tmp_path), "TRAIN.resume", "auto"])
    assert find_resume_state(resume, restart, 1, False, job)[0] == str(tmp_path / LAST_CHECKPOINT)


class _RankOneElsewhere(DistContext):
    """Rank 0 of two whose rank 1 runs on a node without the checkpoint (DIR not shared)."""

    def gather(self, obj):
        return [obj, ("node-b", None)]


def test_every_rank_must_see_the_checkpoint(tmp_path):
    cfg = load_config(CONFIG, ["DIR", str(tmp_path), "TRAIN.resume", "auto"])
    _write_checkpoint(tmp_path, cfg, num_devices=2)
    with pytest.raises(ValueError, match=r"rank 0 resumes from .*checkpoint_last.pth but rank 1 "
                                         r"on node-b finds no checkpoint to resume from: DIR "
                                         r"\(.*\) must be one folder that every node shares"):
        find_resume_state(cfg, _RankOneElsewhere(world_size=2), 1, False, {})
