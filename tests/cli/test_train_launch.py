"""train.py under every launch mode against one reference run, at the recipe's learning rate.

The reference is ``torchrun --nproc_per_node 2`` (DDP, gloo, synced BatchNorm) training
MobileNetV2-dilated + C1-deepsup for 6 steps at lr 0.02 from weights this module writes, the two
devices drawing different image sizes. Every other way to get there must give the same weights
and BatchNorm buffers bit for bit: one process with two CPU replicas (``--gpus cpux2``), runs
stopped by SIGINT/SIGTERM and resumed, two torchrun agents as two nodes, and an elastic run
(``--max-restarts``) whose rank is SIGKILLed. A control run shows that equality is not luck:
initial weights 1e-7 apart end more than 1e-3 apart (this training is chaotic at init).

The two-node and elastic tests are marked slow; CI runs them with
``python -m pytest -m slow tests/cli/test_train_launch.py``.
"""

# ruff: noqa: F811  (the fixtures imported below are test arguments)
from __future__ import annotations

import functools
import json
import os
import random
import re
import signal

import numpy as np
import pytest
import torch
from eval_fixtures import in_process  # noqa: F401  (a fixture)
from train_fixtures import (  # noqa: F401  (dataset is a fixture)
    CONFIG,
    REPO_ROOT,
    dataset,
    free_port,
    load_weights,
    log_lines,
    max_difference,
    run,
    single_node,
    start,
    stop,
    torchrun,
    train_opts,
    wait_for,
    worker_pids,
)

SIZES = "(40,48,56,64)"  # several short sides: the devices get different image sizes
TOTAL_STEPS = 6  # 2 epochs x 3 iterations
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def initial_weights(tmp_path_factory):
    """``(encoder, decoder)`` files of a random init, and an encoder 1e-7 away from it."""
    from mit_semseg.config import load_config
    from mit_semseg.data.synthetic import SYNTHETIC_NUM_CLASS
    from mit_semseg.models import build_segmentation_model

    cfg = load_config(CONFIG)
    torch.manual_seed(0)
    net = build_segmentation_model(cfg.MODEL.arch_encoder, cfg.MODEL.arch_decoder,
                                   SYNTHETIC_NUM_CLASS, fc_dim=cfg.MODEL.fc_dim, pretrained=False)
    folder = tmp_path_factory.mktemp("init")
    paths = {name: folder / f"{name}.pth" for name in ("encoder", "decoder", "nudged")}
    encoder = net.encoder.state_dict()
    torch.save(encoder, paths["encoder"])
    torch.save(net.decoder.state_dict(), paths["decoder"])
    nudged = {k: v.clone() for k, v in encoder.items()}
    first_conv = next(k for k, v in nudged.items() if v.dim() == 4)
    nudged[first_conv].view(-1)[0] += 1e-7
    torch.save(nudged, paths["nudged"])
    return paths


def _opts(dataset, out, initial_weights, encoder="encoder", **keys):
    weights = {"MODEL.weights_encoder": initial_weights[encoder],
               "MODEL.weights_decoder": initial_weights["decoder"]}
    return train_opts(dataset, out, sizes=SIZES, **weights, **keys)


def _train(out, *launcher, flags=(), **opts):
    return [*launcher, "train.py", "--cfg", str(CONFIG), "--gpus", "cpu", *flags,
            *_opts(out=out, **opts)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dataset, initial_weights):
    """The uninterrupted single-node ``torchrun --nproc_per_node 2`` run: its DIR."""
    out = tmp_path_factory.mktemp("reference")
    result = run(_train(out, *single_node(), dataset=dataset, initial_weights=initial_weights,
                        checkpoint_every=0))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "World size 2 on 1 node(s)" in log
    assert "effective batch 4 = 2 device(s) x 2 images per device" in log
    return out


def _assert_same_model(reference, out, case: str = "") -> None:
    """Every weight and BatchNorm buffer of the final epoch equal, bit for bit."""
    difference = max_difference(load_weights(reference, 2), load_weights(out, 2))
    assert difference == 0.0, f"largest difference {difference:.3g} {case}"


def _sizes_per_step(out) -> list[list[tuple[int, int]]]:
    """The image size every device trained on at every step, rebuilt from the run's
    config.yaml with the loaders train.py uses (each device's stream is a function of the
    seed, the epoch and the device index alone)."""
    from mit_semseg.cli.train import open_stream
    from mit_semseg.config import load_config
    from mit_semseg.data.loader import device_batches

    cfg = load_config(out / "config.yaml")
    make_loader = functools.partial(open_stream, cfg, 0, False)
    return [[tuple(device["img_data"].shape[-2:]) for device in batch]
            for epoch in range(cfg.TRAIN.num_epoch)
            for batch in device_batches(make_loader, cfg.TRAIN.seed, [0, 1], epoch)]


@pytest.mark.slow
def test_torchrun_equals_two_cpu_replicas_bit_for_bit(reference, dataset, initial_weights,
                                                      tmp_path):
    sizes = _sizes_per_step(reference)
    assert len(sizes) == TOTAL_STEPS
    assert sum(a != b for a, b in sizes) >= 2, sizes  # the devices' sizes differ
    replicas = tmp_path / "cpux2"
    result = run(_train(replicas, dataset=dataset, initial_weights=initial_weights,
                        flags=["--gpus", "cpux2"]))
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_model(reference, replicas)

    # control: 1e-7 on one initial weight ends far apart, so equality above is no accident
    nudged = tmp_path / "nudged"
    result = run(_train(nudged, dataset=dataset, initial_weights=initial_weights,
                        encoder="nudged", flags=["--gpus", "cpux2"]))
    assert result.returncode == 0, result.stderr[-3000:]
    difference = max_difference(load_weights(replicas, 2), load_weights(nudged, 2))
    assert difference > 1e-3, difference


def _assert_stopped_cleanly(proc, out, output: str, signum: int) -> int:
    """The run stopped on ``signum``: status, one line, no traceback, a loadable state."""
    assert proc.returncode == 128 + signum, output[-3000:]
    assert "Traceback" not in output
    name = signal.Signals(signum).name
    stopped = [line for line in (out / "log.txt").read_text().splitlines()
               if f"Training stopped by {name}" in line]
    assert len(stopped) == 1 and "TRAIN.resume auto" in stopped[0], stopped
    assert not (out / "train.owner").exists()
    iteration = torch.load(out / "checkpoint_last.pth", weights_only=True)["iteration"]
    assert 0 < iteration < TOTAL_STEPS
    return iteration


@pytest.mark.slow
def test_sigint_saves_and_resume_gives_the_same_model(reference, dataset, initial_weights,
                                                      tmp_path):
    out = tmp_path / "run"
    args = _train(out, dataset=dataset, initial_weights=initial_weights, workers=2,
                  checkpoint_every=0, flags=["--gpus", "cpux2"])
    proc = start(args, tmp_path / "out.txt")
    try:
        wait_for(lambda: log_lines(out, "Epoch: [1][0/3]"), proc, 240, "step 1")
        proc.send_signal(signal.SIGINT)  # Ctrl-C, with loader workers running
        proc.wait(timeout=240)
    finally:
        stop(proc)
    output = (tmp_path / "out.txt").read_text()
    stopped_at = _assert_stopped_cleanly(proc, out, output, signal.SIGINT)
    # stopped mid-epoch (usually), or after its last step, which then wrote the epoch's files
    assert (out / "encoder_epoch_1.pth").exists() == (stopped_at >= 3)

    result = run(_train(out, dataset=dataset, initial_weights=initial_weights,
                        flags=["--gpus", "cpux2"], **{"TRAIN.resume": "auto"}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at iteration {stopped_at}" in (out / "log.txt").read_text()
    _assert_same_model(reference, out)


@pytest.mark.slow
def test_sigterm_to_one_torchrun_rank_stops_every_rank(reference, dataset, initial_weights,
                                                       tmp_path):
    out = tmp_path / "run"
    args = _train(out, *single_node(), dataset=dataset, initial_weights=initial_weights,
                  workers=1, checkpoint_every=0)
    proc = start(args, tmp_path / "out.txt", start_new_session=True)
    try:
        wait_for(lambda: log_lines(out, "Epoch: [1][0/3]"), proc, 240, "step 1")
        os.kill(worker_pids(proc.pid)[1], signal.SIGTERM)  # rank 1 only: both must stop
        proc.wait(timeout=240)
    finally:
        stop(proc)
    output = (tmp_path / "out.txt").read_text()
    assert proc.returncode != 0  # torchrun reports its workers' status 143 as a failure
    assert "exitcode  : 143" in output, output[-3000:]
    assert "Training stopped by SIGTERM" in (out / "log.txt").read_text()
    iteration = torch.load(out / "checkpoint_last.pth", weights_only=True)["iteration"]
    assert 0 < iteration < TOTAL_STEPS and not (out / "train.owner").exists()

    result = run(_train(out, *single_node(), dataset=dataset, initial_weights=initial_weights,
                        flags=["--resume", "auto"]))
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_model(reference, out)


@pytest.mark.slow  # about a minute on the shared 2-core machine; CI runs it (-m slow)
def test_two_torchrun_agents_as_two_nodes(reference, dataset, initial_weights, tmp_path,
                                          in_process):
    """``--nnodes 2``, one process per node, c10d rendezvous on 127.0.0.1: the same model as
    one node with two processes, and eval_multipro.py on the two nodes gives eval.py's
    metrics of the reference."""
    out = tmp_path / "two_nodes"

    def on_two_nodes(*args, what):
        rendezvous = torchrun(1, "--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                              f"127.0.0.1:{free_port()}", "--rdzv-id", what, "--local-addr",
                              "127.0.0.1")
        procs = [start([*rendezvous, *args], tmp_path / f"{what}{n}.txt",
                       start_new_session=True) for n in range(2)]
        try:
            for proc in procs:
                proc.wait(timeout=400)
        finally:
            for proc in procs:
                stop(proc)
        for n, proc in enumerate(procs):
            assert proc.returncode == 0, (tmp_path / f"{what}{n}.txt").read_text()[-3000:]

    on_two_nodes(*_train(out, dataset=dataset, initial_weights=initial_weights), what="train")
    log = (out / "log.txt").read_text()
    assert re.search(r"World size 2 on 2 node\(s\): node 0 \(\S+\) rank 0; node 1 \(\S+\) "
                     r"rank 1; 1 cpu device\(s\) per process", log), log[:3000]
    _assert_same_model(reference, out)

    evaluation = ["--cfg", str(CONFIG), "--gpus", "cpu",
                  *_opts(dataset, out, initial_weights), "VAL.checkpoint", "epoch_2.pth",
                  "VAL.workers", "0"]
    on_two_nodes("eval_multipro.py", *evaluation, what="eval")
    code, text = in_process("eval.py", *[str(reference) if a == str(out) else a
                                          for a in map(str, evaluation)])
    assert code == 0, text
    two_nodes = json.loads((out / "eval_metrics.json").read_text())
    one_process = json.loads((reference / "eval_metrics.json").read_text())
    assert two_nodes["processes"] == 2 and two_nodes["num_images"] == 2
    for key in ("mean_iou", "pixel_accuracy", "per_class", "num_pixels"):
        assert two_nodes[key] == one_process[key], key
    np.testing.assert_array_equal(np.load(out / "confusion_matrix.npy"),
                                  np.load(reference / "confusion_matrix.npy"))
    assert not (tmp_path / "eval1.txt").read_text().count("Evaluation Done!")  # rank 1: quiet


@pytest.mark.slow  # about a minute on the shared 2-core machine; CI runs it (-m slow)
def test_elastic_restart_after_a_rank_is_killed(reference, dataset, initial_weights,
                                                tmp_path):
    """``--max-restarts 1``: one rank SIGKILLed at a random step; the restarted workers resume
    from checkpoint_last.pth by themselves and end with the uninterrupted run's weights."""
    seed = int.from_bytes(os.urandom(4), "little")
    chance = random.Random(seed)
    victim, after_steps = chance.randrange(2), chance.randrange(1, TOTAL_STEPS)
    case = f"seed {seed}: rank {victim} killed after {after_steps} step(s)"
    out = tmp_path / "run"
    launcher = torchrun(2, "--rdzv-backend", "c10d", "--rdzv-endpoint",
                        f"127.0.0.1:{free_port()}", "--rdzv-id", "elastic", "--max-restarts", "1")
    proc = start(_train(out, *launcher, dataset=dataset, initial_weights=initial_weights,
                        workers=1), tmp_path / "out.txt", start_new_session=True)
    try:
        wait_for(lambda: log_lines(out, "Epoch: [") >= after_steps, proc, 300, case)
        os.kill(worker_pids(proc.pid)[victim], signal.SIGKILL)
        proc.wait(timeout=400)
    finally:
        stop(proc)
    output = (tmp_path / "out.txt").read_text()
    assert proc.returncode == 0, f"{case}\n{output[-3000:]}"
    log = (out / "log.txt").read_text()
    assert log.count("World size 2") == 2, case  # started twice
    _assert_same_model(reference, out, case)


@pytest.mark.slow
def test_torchrun_trains_the_factored_heads_as_the_plain_ones(dataset, initial_weights,
                                                               tmp_path):
    """PPM under torchrun (DDP, synced BatchNorm): the default factored form and
    TRAIN.factored_heads False give the same weights after a step, up to float32 rounding
    (tests/models/test_factored.py compares more steps in float64)."""
    from mit_semseg.data.synthetic import SYNTHETIC_NUM_CLASS
    from mit_semseg.models import build_decoder

    torch.manual_seed(0)
    decoder = build_decoder("ppm_deepsup", SYNTHETIC_NUM_CLASS, fc_dim=320)
    torch.save(decoder.state_dict(), tmp_path / "ppm.pth")
    outs = {}
    for value in ("True", "False"):
        outs[value] = tmp_path / f"factored_{value}"
        result = run(_train(outs[value], *single_node(), dataset=dataset,
                            initial_weights=dict(initial_weights, decoder=tmp_path / "ppm.pth"),
                            num_epoch=1, epoch_iters=1,
                            **{"MODEL.arch_decoder": "ppm_deepsup",
                               "TRAIN.factored_heads": value}))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    factored, plain = load_weights(outs["True"], 1), load_weights(outs["False"], 1)
    initial = {"encoder": torch.load(initial_weights["encoder"], weights_only=True),
               "decoder": decoder.state_dict()}
    moved = max((plain[net][key] - value).abs().max().item() for net in initial
                for key, value in initial[net].items() if value.is_floating_point())
    difference = max_difference(factored, plain)
    print(f"factored vs plain after one step: {difference:.3g}; the step moved {moved:.3g}")
    assert 0 < difference < 1e-5 < 1e-2 < moved, (difference, moved)
