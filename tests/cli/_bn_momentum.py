"""What test_train_bn_momentum.py checks in every launch mode, and its torchrun-like rank.

:func:`check_running_statistics` runs one training forward of a module built by train.py's
``build_state`` and asserts, for every BatchNorm, that it has the configured momentum and
that its running statistics moved by exactly that fraction towards the statistics of the
values it normalised, over all devices (replicas) and all ranks (DDP). The statistics are
recomputed independently from the layers' inputs, recorded by forward pre-hooks.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

CONFIG = "config/synthetic-mobilenetv2dilated-c1_deepsup.yaml"
NUM_CLASS = 8  # the synthetic config's


def batches(sizes: Sequence[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
    """One 2-image batch per device, each device with its own image size."""
    gen = torch.Generator().manual_seed(7)
    return [{"img_data": torch.randn(2, 3, h, w, generator=gen) * 1.5 + 0.3,
             "seg_label": torch.randint(-1, NUM_CLASS, (2, h // 8, w // 8), generator=gen)}
            for h, w in sizes]


def train_config(root: str, momentum: str):
    from mit_semseg.config import load_config

    return load_config(f"{root}/{CONFIG}", ["TRAIN.pretrained", "False",
                                            "TRAIN.bn_momentum", momentum])


def check_running_statistics(state, device_batches: list[dict], momentum: float,
                             all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
                             ) -> int:
    """Asserts the momentum of every BatchNorm of ``state.module`` and its effect.

    Args:
        state: a :class:`~mit_semseg.engine.trainer.TrainState` (any launch mode).
        device_batches: this process' batch dicts, one per device.
        momentum: the value every layer must have.
        all_reduce: sums a tensor over the ranks (identity in one process).

    Returns:
        the number of BatchNorm layers checked.
    """
    from mit_semseg.engine.trainer import forward_batch

    norms = {name: m for name, m in state.net.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert norms
    wrong = {name: m.momentum for name, m in norms.items() if m.momentum != momentum}
    assert not wrong, f"momentum != {momentum}: {wrong}"
    before = {name: (m.running_mean.double(), m.running_var.double())
              for name, m in norms.items()}
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in norms}
    # replicas share the hooks of the module they copy; each records the values it normalised
    handles = [m.register_forward_pre_hook(
        lambda _module, inputs, name=name: seen[name].append(inputs[0].detach().double()))
        for name, m in norms.items()]
    try:
        state.module.train()
        forward_batch(state.module, device_batches, state.device, state.scattered)
    finally:
        for handle in handles:
            handle.remove()
    for name, norm in norms.items():
        assert seen[name], f"{name} did not run"
        values = torch.cat([x.transpose(0, 1).reshape(x.shape[1], -1) for x in seen[name]], 1)
        moments = all_reduce(torch.stack([values.new_full((values.shape[0],), values.shape[1]),
                                          values.sum(1), (values ** 2).sum(1)]))
        count, total, squares = moments
        mean = total / count
        var = (squares - count * mean ** 2) / (count - 1)
        old_mean, old_var = before[name]
        for label, running, expected in (
                ("running_mean", norm.running_mean, (1 - momentum) * old_mean + momentum * mean),
                ("running_var", norm.running_var, (1 - momentum) * old_var + momentum * var)):
            torch.testing.assert_close(running.double(), expected, rtol=1e-4, atol=1e-6,
                                       msg=lambda m, n=name, k=label: f"{n}.{k}: {m}")
    return len(norms)


def ddp_rank(rank: int, world: int, port: int, root: str, momentum: float) -> None:
    """One rank of a 2-process gloo job: train.py's state under DDP, then the checks."""
    from mit_semseg.cli.train import build_state
    from mit_semseg.engine.distributed import DistContext, cleanup_distributed
    from mit_semseg.nn import DistributedSyncBatchNorm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        cpu = torch.device("cpu")
        state = build_state(train_config(root, str(momentum)), DistContext(rank, world, rank),
                            [cpu], None)
        assert isinstance(state.module, nn.parallel.DistributedDataParallel)
        assert any(isinstance(m, DistributedSyncBatchNorm) for m in state.net.modules())

        def summed(t: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(t)
            return t

        own = batches([(48, 64), (56, 40)])[rank]
        check_running_statistics(state, [own], momentum, summed)
    finally:
        cleanup_distributed()
