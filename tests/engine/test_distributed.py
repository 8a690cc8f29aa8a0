"""mit_semseg.engine.distributed outside torchrun and its start-up errors (no group is joined).

The collectives under a real process group run in tests/cli/test_train.py (torchrun, gloo) and
tests/nn/test_distributed.py (cleanup_distributed)."""

import pytest
import torch

from mit_semseg.engine.distributed import DistContext, init_distributed

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
                  "GROUP_RANK", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID")


@pytest.fixture
def no_torchrun(monkeypatch):
    for var in _TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_init_distributed_without_torchrun(no_torchrun):
    ctx = init_distributed("auto", use_cuda=False)
    assert ctx == DistContext()
    assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main) == (0, 1, False, True)
    assert ctx.gather({"a": 1}) == [{"a": 1}]
    values = torch.tensor([1.0, 2.0])
    mean = ctx.mean(values)
    assert torch.equal(mean, values) and mean is not values
    largest = ctx.max(values)
    assert torch.equal(largest, values) and largest is not values
    ctx.barrier()  # a no-op, must not need a process group


def test_one_process_under_torchrun_knows_its_restart(no_torchrun):
    # torchrun --nproc_per_node 1 --max-restarts 3, second attempt
    for var, value in {"WORLD_SIZE": "1", "RANK": "0", "TORCHELASTIC_RESTART_COUNT": "1",
                       "TORCHELASTIC_RUN_ID": "job-7"}.items():
        no_torchrun.setenv(var, value)
    ctx = init_distributed("auto", use_cuda=False)
    assert ctx == DistContext(restart_count=1, run_id="job-7")
    assert not ctx.distributed and ctx.is_main


@pytest.mark.parametrize(
    "env, backend, message",
    [
        ({"WORLD_SIZE": "two"}, "auto", "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2"}, "auto", "RANK is not set"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "nccl", "DIST.backend 'nccl' needs CUDA"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "gloo", r"\['MASTER_ADDR', 'MASTER_PORT'\] not set"),
    ],
)
def test_init_distributed_errors_name_the_cause(no_torchrun, env, backend, message):
    for var, value in env.items():
        no_torchrun.setenv(var, value)
    with pytest.raises((ValueError, RuntimeError), match=message):
        init_distributed(backend, use_cuda=False)
    assert not torch.distributed.is_initialized()
