"""mit_semseg.cli.run_dir: one run per DIR, and resuming only what was trained (in process:
every case here stops before a model is built)."""
# ruff: noqa: F811  (the fixtures imported below are test arguments)

import logging
import sys

import pytest
from torch import nn
from train_fixtures import CONFIG, REPO_ROOT, dataset, train_opts  # noqa: F401

from mit_semseg.cli.run_dir import check_resume_config, find_resume_state
from mit_semseg.cli.run_lock import RunLock
from mit_semseg.config import ConfigError, load_config
from mit_semseg.engine.checkpoint import LAST_CHECKPOINT, save_training_state
from mit_semseg.engine.distributed import DistContext

sys.path.insert(0, str(REPO_ROOT))
import train  # noqa: E402  (the script under test)


def _write_checkpoint(out, cfg, num_devices=1):
    """A checkpoint_last.pth as train.py writes it (tiny nets: only the format matters)."""
    save_training_state(out / LAST_CHECKPOINT, encoder=nn.Conv2d(1, 1, 1),
                        decoder=nn.Conv2d(1, 1, 1), optimizers={}, epoch=1, iteration=3,
                        history={"train": {}}, rng=[{}], num_devices=num_devices,
                        config=cfg.dump())


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
    with RunLock(out) as held:  # this process plays the first run: alive
        code, err = main(*train_opts(dataset, out))
        assert held.held and (out / "train.lock").exists()
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"train.py: error: {out} is used by another training run (pid ")
    assert f"lock file {out / 'train.lock'}" in err and "delete the lock file" in err
    assert not (out / "train.lock").exists()  # released by its owner, not by the refused run
    assert sorted(p.name for p in out.iterdir()) == []  # nothing written


def test_a_changed_schedule_is_refused_and_the_dir_left_alone(dataset, tmp_path, main):
    out = tmp_path / "run"
    out.mkdir()
    opts = train_opts(dataset, out)
    _write_checkpoint(out, load_config(CONFIG, opts))
    (out / "log.txt").write_text("the first run's log\n")
    before = _snapshot(out)
    changed = opts + ["TRAIN.lr_encoder", "0.01", "TRAIN.epoch_iters", "4",
                      "TRAIN.workers", "3", "TRAIN.disp_iter", "7"]  # the last two: harmless
    code, err = main("--resume", "auto", *changed)
    assert code == 2 and err.count("\n") == 1
    assert ("was trained with a different config: TRAIN.epoch_iters 3 -> 4; "
            "TRAIN.lr_encoder 0.02 -> 0.01; resume with the old values, or pass "
            "--allow-config-change") in err
    assert "workers" not in err and "disp_iter" not in err
    assert _snapshot(out) == before  # no config.yaml, no log line, no lock left


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


def test_torchrun_restart_resumes_from_dir_by_itself(tmp_path):
    cfg = load_config(CONFIG, ["DIR", str(tmp_path)])
    assert find_resume_state(cfg, DistContext(restart_count=1), 1, False) is None  # none yet
    _write_checkpoint(tmp_path, cfg)
    assert find_resume_state(cfg, DistContext(), 1, False) is None  # first start: not asked
    path, saved = find_resume_state(cfg, DistContext(restart_count=1), 1, False)
    assert path == str(tmp_path / LAST_CHECKPOINT) and saved["iteration"] == 3


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
        find_resume_state(cfg, _RankOneElsewhere(world_size=2), 1, False)
