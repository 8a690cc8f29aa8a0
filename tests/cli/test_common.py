"""mit_semseg.cli.common: the shared command line, exit codes and logging setup."""

import logging

import pytest

from mit_semseg.cli import common


def test_setup_logging_rank_aware(tmp_path):
    common.setup_logging(str(tmp_path / "r0"), rank=0)
    logging.getLogger("mit_semseg.test").info("hello from rank 0")
    assert "hello from rank 0" in (tmp_path / "r0" / "log.txt").read_text()
    common.setup_logging(str(tmp_path / "r1"), rank=1)
    assert logging.getLogger().level == logging.WARNING
    assert not (tmp_path / "r1" / "log.txt").exists()
    common.setup_logging(None, rank=0)  # leave a plain console logger behind


def _parser():
    return common.script_parser("x.py", "test", devices_help="devices")


@pytest.mark.parametrize("flag", ["--gpus", "--gpu"])
def test_gpu_is_an_alias_of_gpus(flag):
    args = _parser().parse_args([flag, "cpu", "--cfg", "a.yaml", "TRAIN.seed", "3"])
    assert (args.gpus, args.cfg, args.opts) == ("cpu", "a.yaml", ["TRAIN.seed", "3"])
    assert _parser().parse_args([]).cfg == common.DEFAULT_CFG


def test_bad_command_line_is_a_usage_error_not_an_exit():
    with pytest.raises(common.UsageError, match="unrecognized arguments: --nope"):
        _parser().parse_args(["--nope"])


def test_usage_error_is_one_line_on_stderr_and_exit_code_2(capsys):
    assert common.usage_error("x.py", FileNotFoundError("config file not found: a.yaml")) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == "x.py: error: config file not found: a.yaml\n"


def test_single_device():
    assert common.single_device("cpu").type == "cpu"
    with pytest.raises(common.UsageError, match="--gpus takes one device, got 'cpux2'; more"):
        common.single_device("cpux2", "; more")


def test_flags_may_follow_or_split_the_overrides():
    args = _parser().parse_args(["DIR", "a", "--gpus", "cpu", "TRAIN.lr_pow", "-0.9",
                                 "--cfg", "b.yaml"])
    assert (args.gpus, args.cfg, args.opts) == ("cpu", "b.yaml",
                                                 ["DIR", "a", "TRAIN.lr_pow", "-0.9"])
    with pytest.raises(common.UsageError, match="unrecognized arguments: --nope"):
        _parser().parse_args(["DIR", "a", "--nope"])


def test_multi_line_messages_become_one_line(capsys):
    common.print_error("x.py", ValueError("first\n  second\n\nthird"))
    assert capsys.readouterr().err == "x.py: error: first second third\n"
