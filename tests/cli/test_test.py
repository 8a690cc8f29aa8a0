import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from eval_fixtures import (  # noqa: F401
    CFG,
    REPO_ROOT,
    bound_devices,
    in_process,
    run_script,
    tiny_run,
)
from large_images import write_blank_png

from mit_semseg.cli.test import collect_images, output_names


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


@pytest.fixture
def mixed_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    _write(folder / "photo.jpg", rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    _write(folder / "gray.png", rng.integers(0, 255, (30, 20), dtype=np.uint8))
    _write(folder / "rgba.png", rng.integers(0, 255, (24, 24, 4), dtype=np.uint8))
    _write(folder / "deep.png", rng.integers(0, 65535, (20, 33), dtype=np.uint16))
    _write(folder / "tiny.png", np.full((1, 1, 3), 128, np.uint8))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder


GOOD = {"photo": (40, 56), "gray": (30, 20), "rgba": (24, 24), "deep": (20, 33), "tiny": (1, 1)}


def test_mixed_folder_good_images_written_bad_ones_reported(tiny_run, mixed_folder, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    proc = run_script(
        "test.py", "--imgs", str(mixed_folder), "--cfg", str(CFG), "--gpu", "cpu",
        *tiny_run.overrides(**{"TEST.result": str(out), "TEST.save_label": "True"}),
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log  # some inputs failed, the others were processed
    assert "Traceback" not in log
    assert "empty.jpg: empty file" in log
    assert "corrupt.png: cannot decode" in log
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(GOOD)
    for name, (h, w) in GOOD.items():
        panel = cv2.imread(str(out / f"{name}.png"))
        assert panel.shape[0] >= h and panel.shape[1] > 2 * w
        label = cv2.imread(str(out / "labels" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert label.shape == (h, w) and label.dtype == np.uint8
        assert label.min() >= 1 and label.max() <= tiny_run.num_class
    assert "5 image(s) written" in log and "2 failed" in log


def test_all_good_inputs_exit_zero_and_unique_names(tiny_run, tmp_path):  # noqa: F811
    img = np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    _write(tmp_path / "a" / "x.jpg", img)
    _write(tmp_path / "b" / "x.jpg", img)
    _write(tmp_path / "b" / "big.png", np.tile(img, (3, 3, 1)))
    (tmp_path / "list.txt").write_text("b/big.png\n")
    proc = run_script(
        "test.py", "--imgs", str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg"),
        str(tmp_path / "list.txt"), "--cfg", str(CFG), "--gpu", "cpu",
        # results go next to the inputs: they must never replace them; windows cover big.png
        *tiny_run.overrides(**{"TEST.result": str(tmp_path), "TEST.window_size": "40"}),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["a__x.png", "b__big.png", "b__x.png"]
    assert cv2.imread(str(tmp_path / "b" / "big.png")).shape == (150, 210, 3)


def test_missing_checkpoint_and_no_images(tiny_run, mixed_folder, tmp_path, in_process):  # noqa: F811
    code, out = in_process(
        "test.py", "--imgs", str(mixed_folder), "--cfg", str(CFG), "--gpu", "cpu",
        *tiny_run.overrides(**{"TEST.checkpoint": "epoch_7.pth"}),
    )
    assert code == 2 and "decoder_epoch_7.pth" in out
    code, out = in_process(
        "test.py", "--imgs", str(tmp_path / "nothing_here"), "--cfg", str(CFG), "--gpu", "cpu",
        *tiny_run.overrides(),
    )
    assert code == 2 and "nothing_here: no such file or folder" in out
    assert "no input images" in out


def test_binds_its_gpu_before_loading_the_model(tiny_run, mixed_folder, in_process,  # noqa: F811
                                                bound_devices, monkeypatch):  # noqa: F811
    from mit_semseg.cli import common
    from mit_semseg.inference.trained_model import TrainedModel

    monkeypatch.setattr(common, "single_device", lambda spec, hint="": torch.device("cuda", 3))

    def load(model, device):
        raise FileNotFoundError(f"stop here; bound so far: {bound_devices}")

    monkeypatch.setattr(TrainedModel, "load", load)
    code, out = in_process("test.py", "--imgs", str(mixed_folder / "photo.jpg"), "--cfg",
                           str(CFG), "--gpu", "3", *tiny_run.overrides())
    assert code == 2 and "stop here; bound so far: ['cuda:3']" in out


@pytest.mark.parametrize("error, attempted", [
    # torch >= 2.8 raises AcceleratorError for CUDA errors, older versions a RuntimeError
    (getattr(torch, "AcceleratorError", RuntimeError)("CUDA error: device-side assert "
                                                      "triggered"), 1),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), 1),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 3),
    (RuntimeError("some other failure"), 3),
])
def test_a_cuda_error_stops_the_run_other_errors_skip_one_image(  # noqa: F811
        tiny_run, in_process, tmp_path, monkeypatch, error, attempted):  # noqa: F811
    """Issue 17.7: after a CUDA error that poisons the context, every later image would fail
    the same way: stop and count them as failed, instead of trying each one."""

    rng = np.random.default_rng(2)
    for name in ("a", "b", "c"):
        _write(tmp_path / "in" / f"{name}.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    calls = []

    def predict_labels(*args, **kwargs):
        calls.append(1)
        raise error

    from mit_semseg.cli import test as test_cli

    monkeypatch.setattr(test_cli, "predict_labels", predict_labels)
    code, out = in_process("test.py", "--imgs", str(tmp_path / "in"), "--cfg", str(CFG),
                           "--gpu", "cpu",
                           *tiny_run.overrides(**{"TEST.result": str(tmp_path / "out")}))
    assert code == 1 and len(calls) == attempted
    assert "0 image(s) written" in out and "3 failed" in out
    if attempted == 1:
        assert "the 3 image(s) from this one on are not processed" in out


def test_collect_images_reports_bad_arguments_and_keeps_going(tmp_path):
    img = np.zeros((2, 2, 3), np.uint8)
    a = _write(tmp_path / "set" / "a.JPG", img)
    b = _write(tmp_path / "set" / "sub" / "b.png", img)
    c = _write(tmp_path / "c.bmp", img)
    (tmp_path / "list.txt").write_text(f"{c}\n{a}\n")
    (tmp_path / "empty").mkdir()
    images, problems = collect_images(
        [tmp_path / "set", tmp_path / "empty", tmp_path / "nope.jpg", tmp_path / "list.txt"]
    )
    assert images == [a, b, c]  # a listed twice, kept once
    assert len(problems) == 2
    assert "empty" in problems[0]
    assert "nope.jpg" in problems[1] and "no such file" in problems[1]


def test_output_names_unique_and_readable(tmp_path):
    paths = [
        tmp_path / "x" / "img.jpg",
        tmp_path / "y" / "img.jpg",
        tmp_path / "y" / "other.png",
        tmp_path / "y" / "dup.jpg",
        tmp_path / "y" / "dup.png",
    ]
    names = output_names(paths)
    assert names == ["x__img", "y__img", "y__other", "y__dup_jpg", "y__dup_png"]
    assert output_names([tmp_path / "one" / "pic.jpeg"]) == ["pic"]
    assert output_names([tmp_path / "f" / "a.jpg", tmp_path / "f" / "b.jpg"]) == ["a", "b"]


def _limit_address_space():
    # a test.py that decoded the bomb would need tens of GB (its class scores at full size):
    # it fails at once here instead of filling the machine's memory (the run itself needs
    # about 4 GB of address space, mostly libraries and thread stacks)
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def test_a_decompression_bomb_is_skipped_with_one_line(tiny_run, tmp_path):  # noqa: F811
    good = _write(tmp_path / "imgs" / "good.jpg", np.full((40, 56, 3), 90, np.uint8))
    bomb = write_blank_png(tmp_path / "imgs" / "bomb.png")  # 20000x20000 pixels in ~50 KB
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "test.py"), "--imgs", str(good), str(bomb),
         "--cfg", str(CFG), "--gpu", "cpu", *tiny_run.overrides(**{"TEST.result": str(out)})],
        cwd=REPO_ROOT, env=dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1"),
        capture_output=True, text=True, timeout=120, preexec_fn=_limit_address_space)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log  # one input failed, the other was processed
    assert "Traceback" not in log
    skipped = [line for line in log.splitlines() if "skipped: " in line]
    assert len(skipped) == 1 and skipped[0].endswith(
        f"skipped: {bomb}: 20000x20000 = 400,000,000 pixels, more than the limit of "
        "89,478,485 (DATASET.max_image_pixels); not decoded (sample <list>[1])"), log
    assert sorted(p.name for p in out.glob("*.png")) == ["good.png"]
    assert "1 image(s) written" in log and "1 failed" in log
