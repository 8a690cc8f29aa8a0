"""scripts/slurm/train.sbatch, dry run: fake ``scontrol`` and ``srun`` on PATH record what the
script would launch, and torchrun's and train.py's own parsers read it back."""

import os
import stat
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SBATCH = REPO_ROOT / "scripts" / "slurm" / "train.sbatch"


def _fake(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\nset -eu\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _dry_run(tmp_path: Path, *args: str, **env: str) -> tuple[list[str], str]:
    """Run the sbatch script as SLURM would on the first node; return srun's argv and stdout."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "srun_argv"
    # scontrol expands the node list; srun writes its arguments, one per line
    _fake(bin_dir, "scontrol", '[ "$1 $2 $3" = "show hostnames gpu-[07-08]" ]\n'
                               'printf "gpu-07\\ngpu-08\\n"\n')
    _fake(bin_dir, "srun", f'printf "%s\\n" "$@" > {record}\n')
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu-[07-08]",
             "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "8"}
    result = subprocess.run(
        ["bash", str(SBATCH), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, **slurm, **env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    return record.read_text().splitlines(), result.stdout


def _torchrun_args(argv: list[str]):
    from torch.distributed.run import get_args_parser

    start = argv.index("torch.distributed.run") + 1
    assert argv[start - 2:start] == ["-m", "torch.distributed.run"]
    return get_args_parser().parse_args(argv[start:])


def test_sbatch_launches_one_torchrun_agent_per_node(tmp_path):
    argv, out = _dry_run(tmp_path, "--cfg", "config/ade20k-resnet50dilated-ppm_deepsup.yaml",
                         "TRAIN.num_epoch", "30")
    assert argv[0] == "--ntasks-per-node=1" and argv[1] == "python"
    launch = _torchrun_args(argv)
    assert (launch.nnodes, launch.nproc_per_node) == ("2", "8")
    assert (launch.rdzv_backend, launch.rdzv_endpoint, launch.rdzv_id) == (
        "c10d", "gpu-07:29400", "4242")
    assert launch.max_restarts == 3
    assert launch.training_script == "train.py"
    sys.path.insert(0, str(REPO_ROOT))
    from mit_semseg.cli.train import parse_args

    train_args = parse_args(launch.training_script_args)
    assert train_args.resume == "auto"
    assert train_args.cfg == "config/ade20k-resnet50dilated-ppm_deepsup.yaml"
    assert train_args.opts == ["TRAIN.num_epoch", "30"]
    assert "job 4242: 2 node(s) x 8 process(es), rendezvous on gpu-07:29400" in out


def test_sbatch_settings_from_the_environment(tmp_path):
    argv, _ = _dry_run(tmp_path, "--gpus", "cpu", NPROC_PER_NODE="4", RDZV_PORT="31000",
                       MAX_RESTARTS="0", PYTHON=sys.executable)
    assert argv[1] == sys.executable
    launch = _torchrun_args(argv)
    assert (launch.nproc_per_node, launch.rdzv_endpoint, launch.max_restarts) == (
        "4", "gpu-07:31000", 0)
    assert launch.training_script_args == ["--resume", "auto", "--gpus", "cpu"]
