"""mit_semseg.engine.run_control: signals, periodic saves and the stop after a step.

Real signals are sent to this process (the watch is active only inside ``with``) or, for the
"second signal exits at once" case, to a child process. train.py under real signals, with
one process and with torchrun, is tested in tests/cli/test_train_launch.py.
"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from mit_semseg.engine.checkpoint import load_training_state
from mit_semseg.engine.optim import PolySchedule, build_optimizers
from mit_semseg.engine.run_control import (
    RunControl,
    SignalWatch,
    TrainingInterrupted,
    signal_name,
)
from mit_semseg.engine.trainer import ResumableCheckpoint, TrainState
from mit_semseg.nn.precision import grad_scaler

CPU = torch.device("cpu")


class _Nets(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1)


def _state(iteration):
    net = _Nets()
    optimizers = build_optimizers(net.encoder, net.decoder, lr_encoder=0.1, lr_decoder=0.1,
                                  momentum=0.9, weight_decay=0.0)
    return TrainState(module=net, optimizers=optimizers,
                      schedule=PolySchedule({"encoder": 0.1, "decoder": 0.1}, 100, 0.9),
                      scaler=grad_scaler(CPU, ""), epoch_iters=4, device=CPU,
                      iteration=iteration)


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_first_signal_is_recorded_and_handlers_restored():
    before = signal.getsignal(signal.SIGTERM)
    with SignalWatch() as watch:
        assert watch.signum is None
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before kill returns
        assert watch.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # a repeat within the window: the same request
        assert watch.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_signal_after_the_window_exits_at_once():
    script = textwrap.dedent("""
        import os, signal, time
        from mit_semseg.engine.run_control import SignalWatch
        with SignalWatch(repeat_window_s=0.2) as watch:
            os.kill(os.getpid(), signal.SIGINT)
            print("first", watch.signum, flush=True)
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGTERM)
            print("still running", flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 128 + signal.SIGTERM
    assert result.stdout == f"first {int(signal.SIGINT)}\n"
    assert result.stderr == "got SIGTERM again: exiting at once\n"


def test_periodic_saves_by_steps_and_by_minutes(tmp_path):
    path = tmp_path / "last.pth"
    clock = _Clock()
    control = RunControl(ResumableCheckpoint(str(path), every=3), SignalWatch(),
                         every_seconds=60, clock=clock)
    state = _state(0)
    saved_at = []
    for done, minutes in zip(range(1, 9), (0.1, 0.5, 0.6, 1.7, 1.8, 1.9, 2.0, 2.9)):
        state.iteration, clock.now = done, 60 * minutes
        control(state)
        if path.exists():
            saved_at.append(load_training_state(path)["iteration"])
            path.unlink()
    # 3 and 6: every 3 steps; 5: a minute after the save at step 3 (1.8 - 0.6 >= 1);
    # 4 and 8 end an epoch (4 steps): written by the end-of-epoch code, not here
    assert saved_at == [3, 5, 6]


@pytest.mark.parametrize("iteration, saved_here", [(6, True), (8, False)])
def test_a_signal_stops_after_the_step_with_the_state_saved(tmp_path, iteration, saved_here):
    path = tmp_path / "last.pth"
    watch = SignalWatch()
    control = RunControl(ResumableCheckpoint(str(path)), watch)
    state = _state(iteration)
    control(state)  # no signal: goes on, nothing due
    assert not path.exists()
    watch.signum = signal.SIGTERM  # as the handler would set it
    with pytest.raises(TrainingInterrupted) as stop:
        control(state)
    assert (stop.value.signum, stop.value.iteration, stop.value.exit_code) == (15, iteration,
                                                                               143)
    assert str(stop.value) == f"stopped by SIGTERM after iteration {iteration}"
    # mid-epoch it saves; at an epoch's end the end-of-epoch code does (after the epoch files)
    assert path.exists() == saved_here


def test_signal_names():
    assert (signal_name(2), signal_name(15), signal_name(99)) == ("SIGINT", "SIGTERM", "99")
