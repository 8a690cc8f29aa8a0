"""What writing the resumable state costs, on an ADE20K-sized model (no comparison).

``train.py`` writes ``DIR/checkpoint_last.pth`` every ``TRAIN.checkpoint_every`` steps, every
``TRAIN.checkpoint_minutes`` minutes, when a signal stops it and at the end of each epoch. A
run that dies loses the work since the last write, so the interval trades lost work against
the time spent writing. This script measures, for ResNet-50-dilated + PPM-deepsup with 150
classes (the ADE20K recipe) and its two SGD optimizers with momentum buffers:

* the size of ``checkpoint_last.pth`` and the median time of :meth:`ResumableCheckpoint.save`
  (state dicts to the CPU, RNG states, ``torch.save``, write + fsync + rename into ``--dir``);
* the time to read it back (:func:`load_training_state`);
* the median time of one fp32 training step on this CPU (batch 2 at ``--size`` px), to put
  ``TRAIN.checkpoint_every`` in minutes here;
* the resulting overhead of the time-based default: save time / (60 x checkpoint_minutes).

    python benchmarks/bench_checkpoint.py [--dir /tmp] [--repeats 5] [--size 300]
        [--steps 2] [--threads 2] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    parser.add_argument("--repeats", type=int, default=5, help="saves and loads timed")
    parser.add_argument("--size", type=int, default=300, help="training image side, px")
    parser.add_argument("--steps", type=int, default=2, help="training steps timed (0: skip)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    args = parser.parse_args()
    sys.path.insert(0, str(common.REPO_ROOT))
    import torch

    from mit_semseg.config import get_cfg_defaults
    from mit_semseg.engine.checkpoint import RunStamp, load_training_state
    from mit_semseg.engine.optim import PolySchedule, build_optimizers
    from mit_semseg.engine.trainer import ResumableCheckpoint, TrainState, train_step
    from mit_semseg.models import build_segmentation_model
    from mit_semseg.nn.precision import grad_scaler

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    defaults = get_cfg_defaults()
    net = build_segmentation_model("resnet50dilated", "ppm_deepsup", 150, fc_dim=2048,
                                   pretrained=False, deep_sup_scale=0.4)
    cpu = torch.device("cpu")
    state = TrainState(
        module=net,
        optimizers=build_optimizers(net.encoder, net.decoder, lr_encoder=0.02,
                                    lr_decoder=0.02, momentum=0.9, weight_decay=1e-4),
        schedule=PolySchedule({"encoder": 0.02, "decoder": 0.02}, 100, 0.9),
        scaler=grad_scaler(cpu, ""), epoch_iters=100, device=cpu)

    def batch(size: int) -> list[dict]:
        return [{"img_data": torch.randn(2, 3, size, size),
                 "seg_label": torch.randint(-1, 150, (2, -(-size // 8), -(-size // 8)))}]

    train_step(state, batch(64))  # fills the momentum buffers that the checkpoint holds
    step_seconds = []
    for _ in range(args.steps):
        tic = time.perf_counter()
        train_step(state, batch(args.size))
        step_seconds.append(time.perf_counter() - tic)

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "checkpoint_last.pth"
        last = ResumableCheckpoint(str(path), stamp=RunStamp(config=defaults.dump()))
        saves, loads = [], []
        for _ in range(args.repeats):
            tic = time.perf_counter()
            last.save(state)
            saves.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            load_training_state(path)
            loads.append(time.perf_counter() - tic)
        size_mib = path.stat().st_size / 2**20
        where = args.dir or tempfile.gettempdir()

    save_s, load_s = statistics.median(saves), statistics.median(loads)
    minutes = defaults.TRAIN.checkpoint_minutes
    rows = [["checkpoint_last.pth size", f"{size_mib:.0f} MiB"],
            ["save (median)", f"{save_s:.2f} s (runs: {', '.join(f'{s:.2f}' for s in saves)})"],
            ["load (median)", f"{load_s:.2f} s"],
            [f"overhead at TRAIN.checkpoint_minutes {minutes:g}",
             f"{100 * save_s / (60 * minutes):.2f} % of the run"]]
    if step_seconds:
        step_s = statistics.median(step_seconds)
        every = defaults.TRAIN.checkpoint_every
        rows += [[f"fp32 training step here, batch 2 at {args.size} px", f"{step_s:.1f} s"],
                 [f"TRAIN.checkpoint_every {every} steps here",
                  f"{every * step_s / 60:.0f} min of work"]]
    lines = [
        "ResNet-50-dilated + PPM-deepsup, 150 classes, both SGD optimizers with momentum; "
        f"written to {where} (write + fsync + rename).",
        "",
        common.markdown_table(["what", "measured"], rows),
        "",
        "A run loses at most `TRAIN.checkpoint_minutes` of work plus one step (and at most "
        "`TRAIN.checkpoint_every` steps), whatever the hardware; every write costs the save "
        "time above on every rank (the ranks wait for rank 0).",
    ]
    command = ("python benchmarks/bench_checkpoint.py " +
               f"--repeats {args.repeats} --size {args.size} --steps {args.steps} "
               f"--threads {args.threads}")
    common.report("checkpoint", "Checkpoint cost (`benchmarks/bench_checkpoint.py`)", args,
                  command, lines)


if __name__ == "__main__":
    main()
