"""Your own data through the public commands: a prepared dataset of real photographs, in each
mask convention, trains (1-2 iterations), evaluates and is segmented with its own class names;
``MODEL.init_from`` fine-tunes a run folder, a published run and a released model (served by
a local mirror) for other classes; the encoder can be frozen for the first iterations; a
training run carries its class table."""

from __future__ import annotations

import csv
import importlib
import io
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from eval_fixtures import load_script
from local_http import serve_zoo_model
from own_data import CLASSES, PHOTOS, write_photo_dataset

from mit_semseg.config import load_config
from mit_semseg.data import prepare
from mit_semseg.models.classes import load_class_info

SMALL = "ade20k-mobilenetv2dilated-c1_deepsup"
CONVENTIONS = {
    "index": ["--classes", "classes.csv"],
    "ignore255": ["--ignore-index", "255", "--classes", "classes.csv"],
    "colour": ["--mask-format", "colour", "--classes", "classes.csv", "--ignore-colour", "0,0,0"],
    "binary": ["--mask-format", "binary"],
}
# a run of a few seconds: one scale of 48 px, batches of 2, no loader processes
TINY = ["DATASET.imgSizes", "(48,)", "DATASET.imgMaxSize", "64", "TRAIN.num_epoch", "1",
        "TRAIN.epoch_iters", "1", "TRAIN.batch_size_per_gpu", "2", "TRAIN.workers", "0",
        "TRAIN.disp_iter", "1", "VAL.workers", "0", "TEST.workers", "0",
        "MODEL.fast_inference", "False"]
RECIPE = ["--recipe", "synthetic-mobilenetv2dilated-c1_deepsup"]
# learning rates 0 and frozen BatchNorm: the first epoch's files hold the initial weights
NO_STEP = ["TRAIN.lr_decoder", "0.0", "TRAIN.lr_encoder", "0.0", "TRAIN.fix_bn", "True"]


def prepared(root, convention, flags=(), overrides=(), names=PHOTOS, classes_csv=None):
    """``root/data/mine`` prepared from photographs with masks in ``convention`` (and
    ``classes_csv`` as the class table, if given), with more ``flags`` and config
    ``overrides``; the run's DIR is ``root/ckpt/mine``. Returns the config file."""
    write_photo_dataset(root, convention, names)
    if classes_csv is not None:
        (root / "classes.csv").write_text(classes_csv)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert run_prepare("--images", "photos", "--masks", "masks", "--out", "data/mine",
                           *CONVENTIONS[convention], *RECIPE, *flags, *TINY, *overrides) == 0
    return root / "data" / "mine" / "config.yaml"


def run_prepare(*args: str) -> int:
    """``python -m mit_semseg.data.prepare ARGS`` in this process; its exit status."""
    try:
        prepare.main(list(args))
    except SystemExit as stop:
        return stop.code
    return 0


def decoder_file(config, epoch=1):
    return torch.load(f"{load_config(config).DIR}/decoder_epoch_{epoch}.pth", weights_only=True)


def encoder_file(config, epoch=1):
    return torch.load(f"{load_config(config).DIR}/encoder_epoch_{epoch}.pth", weights_only=True)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A training run (wall, sky, person) to fine-tune from: one step on the photographs."""
    root = tmp_path_factory.mktemp("source")
    config = prepared(root, "colour")
    assert load_script("train.py").main(["--cfg", str(config)]) == 0
    return Path(load_config(config).DIR)


# colour masks in the default suite (their conversion is checked for every convention by
# tests/data/test_prepare.py); the others train, evaluate and segment under -m slow
@pytest.mark.parametrize("convention", ["colour", *(pytest.param(c, marks=pytest.mark.slow)
                                                    for c in ("index", "ignore255", "binary"))])
def test_prepared_dataset_trains_evaluates_and_segments(convention, tmp_path, in_process):
    config = prepared(tmp_path, convention)
    cfg = load_config(config)
    names = ["background", "foreground"] if convention == "binary" else list(CLASSES)
    code, out = in_process("train.py", "--cfg", str(config))
    assert code == 0, out
    run = tmp_path / "ckpt" / "mine"
    # the run folder names its classes: the dataset's table, copied
    assert load_class_info(run / "object_info.csv")["names"] == names
    assert (run / "object_info.csv").read_text() == (
        tmp_path / "data" / "mine" / "object_info.csv").read_text()
    code, out = in_process("eval.py", "--cfg", str(config), "VAL.visualize", "True")
    assert code == 0, out
    metrics = json.loads((run / "eval_metrics.json").read_text())
    assert [c["name"] for c in metrics["per_class"]] == names
    with open(run / "class_iou.csv", newline="") as f:
        assert [row["name"] for row in csv.DictReader(f)] == names
    assert (run / "confusion_matrix.png").is_file() and len(list((run / "result").glob("*")))
    for index, name in enumerate(names):  # the per-class IoU lines
        assert re.search(rf"class \[{index}\], IoU: [0-9.]+  acc: [0-9.]+  {name}\b", out), out
    code, out = in_process("test.py", "--imgs", str(tmp_path / "photos"), "--cfg", str(config))
    assert code == 0, out
    pictures = sorted(p.stem for p in (run / "pictures").glob("*.png"))
    assert pictures == sorted(PHOTOS) and cfg.TEST.result == str(run / "pictures")
    shares = [line for line in out.splitlines() if "Predictions in [" in line]
    assert len(shares) == len(PHOTOS)
    assert all(any(f"{n}: " in line for n in names) for line in shares)


def test_test_py_names_classes_from_the_run_folder(source_run, tmp_path, in_process):
    """A run copied elsewhere, its dataset gone: test.py still names the classes."""
    run = tmp_path / "run"
    shutil.copytree(source_run, run)
    write_photo_dataset(tmp_path, "index", PHOTOS[:2])
    code, out = in_process("test.py", "--imgs", str(tmp_path / "photos"), "--cfg",
                           "synthetic-mobilenetv2dilated-c1_deepsup", "DIR", str(run),
                           "DATASET.root_dataset", str(tmp_path / "nowhere"),
                           "DATASET.num_class", "3", "TEST.checkpoint", "epoch_1.pth",
                           "TEST.result", str(tmp_path / "out"), *TINY)
    assert code == 0, out
    assert f"class names from {run / 'object_info.csv'}" in out
    shares = [line for line in out.splitlines() if "Predictions in [" in line]
    assert shares and all(any(f"{n}: " in line for n in CLASSES) for line in shares)


@pytest.mark.slow
def test_fine_tuning_a_run_folder_copies_matched_classes(source_run, tmp_path, in_process):
    """Target classes: two of the source's (one by a synonym, the other in capitals) and a new
    one; with no step taken, the checkpoint is the initialisation."""
    config = prepared(tmp_path, "index", ["--init-from", str(source_run)], NO_STEP,
                      classes_csv="name,r,g,b\ntree,0,255,0\nSKY,0,0,255\npeople;person,255,0,0\n")
    assert load_config(config).MODEL.init_from == str(source_run)
    code, out = in_process("train.py", "--cfg", str(config))
    assert code == 0, out
    line = next(x for x in out.splitlines() if "MODEL.init_from" in x and "matched" in x)
    assert "classes matched (2 of 3): SKY <- sky, people <- person; new: tree" in line
    assert line.split("] ", 1)[1] in (tmp_path / "ckpt" / "mine" / "log.txt").read_text()
    source = torch.load(source_run / "decoder_epoch_1.pth", weights_only=True)
    target = decoder_file(config)
    for key in ("conv_last.weight", "conv_last.bias", "conv_last_deepsup.weight"):
        assert torch.equal(target[key][1:], source[key][1:]), key  # sky, person
        assert not any(torch.equal(target[key][0], row) for row in source[key])  # tree: new
    for key, value in torch.load(source_run / "encoder_epoch_1.pth", weights_only=True).items():
        assert torch.equal(encoder_file(config)[key], value), key


def test_freezing_the_encoder_for_the_first_iterations(source_run, tmp_path, in_process):
    config = prepared(tmp_path, "colour", ["--init-from", str(source_run)],
                      ["TRAIN.num_epoch", "2", "TRAIN.epoch_iters", "2",
                       "TRAIN.freeze_encoder_iters", "2", "TRAIN.lr_encoder", "0.01"])
    code, out = in_process("train.py", "--cfg", str(config))
    assert code == 0, out
    source = torch.load(source_run / "encoder_epoch_1.pth", weights_only=True)
    frozen, thawed = encoder_file(config, 1), encoder_file(config, 2)
    weights = [k for k in source if k.endswith("weight") and source[k].dim() == 4]
    assert all(torch.equal(frozen[k], source[k]) for k in weights)  # 2 frozen steps
    assert not all(torch.equal(thawed[k], source[k]) for k in weights)  # then it learns
    decoder_source = torch.load(source_run / "decoder_epoch_1.pth", weights_only=True)
    assert not torch.equal(decoder_file(config)["cbr.0.weight"], decoder_source["cbr.0.weight"])
    history = torch.load(f"{load_config(config).DIR}/history_epoch_2.pth", weights_only=False)
    lrs = history["train"]["lr_encoder"]
    assert lrs[:2] == [0.0, 0.0] and all(lr > 0 for lr in lrs[2:]) and len(lrs) == 4


def test_fine_tuning_a_released_model_and_a_published_run(
        source_run, tmp_path, monkeypatch, http_server, in_process):
    monkeypatch.setenv("MIT_SEMSEG_MODEL_MIRROR", http_server.url)
    monkeypatch.setenv("MIT_SEMSEG_HOME", str(tmp_path / "home"))
    released = serve_zoo_model(http_server, SMALL)
    # wall, sky and person are ADE20K classes 0, 2 and 12
    config = prepared(tmp_path / "a", "colour", ["--init-from", SMALL], NO_STEP)
    code, out = in_process("train.py", "--cfg", str(config))
    assert code == 0, out
    assert ("classes matched (3 of 3): wall <- wall, sky <- sky, person <- person; new: none"
            in out)
    target = decoder_file(config)
    for key in ("conv_last.weight", "conv_last_deepsup.bias"):
        assert torch.equal(target[key], released.decoder.state_dict()[key][[0, 2, 12]])
    # the source run published on the mirror under a name of its own
    for name in ("config.yaml", "object_info.csv", "encoder_epoch_1.pth", "decoder_epoch_1.pth"):
        http_server.serve(f"/photo-run/{name}", (source_run / name).read_bytes())
    config = prepared(tmp_path / "b", "binary", ["--init-from", "photo-run"], NO_STEP)
    code, out = in_process("train.py", "--cfg", str(config))
    assert code == 0, out
    assert "MODEL.init_from published run photo-run: loaded the encoder" in out
    assert "classes matched (0 of 2)" in out and "new: background, foreground" in out


def test_bad_init_from_stops_before_the_run_folder_is_touched(source_run, tmp_path, in_process):
    config = prepared(tmp_path, "index")
    run = tmp_path / "ckpt" / "mine"
    code, _, err = in_process("train.py", "--cfg", str(config), "MODEL.init_from",
                              str(tmp_path / "missing"), streams=True)
    assert code == 2 and err.startswith("train.py: error: MODEL.init_from ") and "missing" in err
    assert len(err.strip().splitlines()) == 1 and not (run / "config.yaml").exists()
    # a source of another architecture
    code, _, err = in_process("train.py", "--cfg", str(config), "MODEL.init_from",
                              str(source_run), "MODEL.arch_encoder", "resnet18dilated",
                              "MODEL.fc_dim", "512", streams=True)
    assert code == 2 and "is a mobilenetv2dilated + c1_deepsup model but MODEL.arch_encoder" \
        " is 'resnet18dilated'; set MODEL.arch_encoder mobilenetv2dilated" in err
    # weights for other classes given as MODEL.weights_decoder: the error points at init_from
    code, _, err = in_process("train.py", "--cfg", str(config), "MODEL.weights_decoder",
                              f"{source_run}/decoder_epoch_1.pth", "DATASET.num_class", "4",
                              streams=True)
    assert code == 2 and "was trained for 3 classes but DATASET.num_class is 4" in err
    assert "MODEL.init_from" in err and not (run / "config.yaml").exists()


# ----------------------------------------------------------------------------- docs/own-data.md
DOC = Path(__file__).resolve().parents[2] / "docs" / "own-data.md"
# the folders the page's commands read, and the convention of their masks
DOC_FOLDERS = {"my_photos": ("my_masks", "colour"), "voc_photos": ("voc_masks", "ignore255"),
               "scans": ("scan_masks", "binary")}


def doc_commands() -> list[list[str]]:
    """Every command of the page's ```bash blocks, split as the shell would."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                commands.append(shlex.split(line))
    return commands


def doc_classes() -> str:
    return re.search(r"```csv\n(.*?)```", DOC.read_text(), re.S).group(1)


def test_the_pages_commands_are_valid_command_lines():
    """Cheap, in the default suite: each command names a module or script whose parser takes
    its flags (the slow test below runs them all)."""
    commands = doc_commands()
    assert len(commands) >= 8
    for argv in commands:
        assert argv[0] == "python", argv
        if argv[1] == "-m":
            module = importlib.import_module(argv[2])
            assert hasattr(module, "main"), argv
            if hasattr(module, "parse_args"):
                module.parse_args(argv[3:])
        else:  # the scripts are wrappers of mit_semseg.cli.<name>
            importlib.import_module(f"mit_semseg.cli.{argv[1][:-3]}").parse_args(argv[2:])
    rows = list(csv.DictReader(io.StringIO(doc_classes())))
    assert [r["name"] for r in rows] == ["wall", "person;people", "scratch"]


@pytest.mark.slow
def test_every_command_of_the_page_runs(tmp_path, monkeypatch, http_server, in_process):
    """The page's commands in order, in a folder holding what it starts from: photographs
    with masks in the conventions it names, its classes.csv, and the released model on a local
    mirror (random weights). Only the prepare commands get overrides (tiny sizes, one step),
    which the page allows."""
    table = doc_classes()
    colours = [tuple(int(r[c]) for c in "rgb") for r in csv.DictReader(io.StringIO(table))]
    for images, (masks, convention) in DOC_FOLDERS.items():
        write_photo_dataset(tmp_path, convention, images=images, masks=masks, colours=colours,
                            classes_csv=table)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MIT_SEMSEG_MODEL_MIRROR", http_server.url)
    monkeypatch.setenv("MIT_SEMSEG_HOME", str(tmp_path / "home"))
    serve_zoo_model(http_server, SMALL)
    outputs = []
    for argv in doc_commands():
        if argv[1] == "-m":
            extra = TINY if argv[2] == "mit_semseg.data.prepare" else []
            try:
                importlib.import_module(argv[2]).main(argv[3:] + extra)
                code = 0
            except SystemExit as stop:  # the checker always exits; prepare on errors
                code = stop.code
            out = ""
        else:
            code, out = in_process(argv[1], *argv[2:])
        assert code == 0, (argv, out)
        outputs.append(out)
    run = tmp_path / "ckpt" / "mine"
    log = (run / "log.txt").read_text()
    assert ("classes matched (2 of 3): wall <- wall, person <- person; new: scratch" in log)
    assert "released model ade20k-mobilenetv2dilated-c1_deepsup" in log
    metrics = json.loads((run / "eval_metrics.json").read_text())
    assert [c["name"] for c in metrics["per_class"]] == ["wall", "person", "scratch"]
    assert sorted(p.stem for p in (run / "pictures").glob("*.png")) == sorted(PHOTOS)
    assert (run / "result").is_dir() and (tmp_path / "ckpt" / "mine-frozen" / "log.txt").is_file()
    assert ("classes matched (3 of 3): wall <- wall, person <- person, scratch <- scratch"
            in (tmp_path / "ckpt" / "voc" / "log.txt").read_text())  # the run's own classes
    assert load_class_info(tmp_path / "data" / "scans" / "object_info.csv")["names"] == [
        "background", "foreground"]


# ----------------------------------------------------------------------------- name matching
# The synthetic demo model (8 named classes), trained briefly, plays a released model that is
# not in the ADE20K zoo: a run published on the (local) model mirror.
DEMO = "synthetic-mobilenetv2dilated-c1_deepsup"
ARCH_OF_DEMO = ("mobilenetv2dilated", "c1_deepsup")
DEMO_EPOCHS = 2
DEMO_RUN_FILES = ("config.yaml", "object_info.csv", f"encoder_epoch_{DEMO_EPOCHS}.pth",
                  f"decoder_epoch_{DEMO_EPOCHS}.pth")
# the fine-tuning dataset: four of the demo's classes, named otherwise (case, a synonym), and a
# new one; synthetic label value -> the new masks' value (0-based, 255 = unlabeled)
TARGET_CSV = ("name,r,g,b\nBackground,128,128,120\nred circle;Red Disc,205,35,35\n"
              "BLUE TRIANGLE,35,60,210\nyellow disc,230,210,30\nwater,0,0,255\n")
MATCHED = {"Background": "background", "red circle": "red disc",
           "BLUE TRIANGLE": "blue triangle", "yellow disc": "yellow disc"}
TRAIN_VALUES = {1: 0, 2: 1, 4: 2, 5: 3, 8: 4}  # the orange ellipses become the new "water"
VAL_VALUES = {1: 0, 2: 1, 4: 2, 5: 3}  # validation: only the matched classes are labelled
# How far a matched class's IoU may be from the source model's on the same pixels, and the
# mean over them. Not equal: the freshly initialised new class takes some pixels (measured:
# a quarter of the blue triangles' predictions), and the dropped classes no longer do.
IOU_TOLERANCE = 0.1
MEAN_IOU_TOLERANCE = 0.05


def data_opts(root: Path) -> list[str]:
    return ["DATASET.root_dataset", str(root), "DATASET.list_train", str(root / "training.odgt"),
            "DATASET.list_val", str(root / "validation.odgt")]


@pytest.fixture(scope="module")
def demo_release(tmp_path_factory):
    """The demo model after a short training, its evaluation and its run folder."""
    from mit_semseg.data.synthetic import generate

    root = tmp_path_factory.mktemp("demo")
    generate(root / "data", num_train=200, num_val=20, seed=0)
    opts = ["DIR", str(root / "run"), *data_opts(root / "data"), "TRAIN.num_epoch",
            str(DEMO_EPOCHS), "TRAIN.epoch_iters", "60", "TRAIN.workers", "0", "VAL.workers",
            "0", "VAL.checkpoint", f"epoch_{DEMO_EPOCHS}.pth"]
    assert load_script("train.py").main(["--cfg", DEMO, "--gpus", "cpu", *opts]) == 0
    assert load_script("eval.py").main(["--cfg", DEMO, "--gpus", "cpu", *opts]) == 0
    return root


def relabelled(demo: Path, out: Path, split: str, values: dict[int, int]) -> tuple[Path, Path]:
    """The demo's ``split`` images and their masks with ``values`` (others: 255)."""
    import cv2
    import numpy as np

    from mit_semseg.data.odgt import read_odgt

    lookup = np.full(256, 255, np.uint8)
    for old, new in values.items():
        lookup[old] = new
    for record in read_odgt(demo / f"{split}.odgt")[0]:
        name = Path(record["fpath_img"]).stem
        (out / f"{split}_images").mkdir(parents=True, exist_ok=True)
        shutil.copy(demo / record["fpath_img"], out / f"{split}_images" / f"{name}.jpg")
        label = cv2.imread(str(demo / record["fpath_segm"]), cv2.IMREAD_UNCHANGED)
        (out / f"{split}_masks").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / f"{split}_masks" / f"{name}.png"), lookup[label])
    return out / f"{split}_images", out / f"{split}_masks"


def restricted_iou(confusion, source_index: int, labelled: list[int]) -> float:
    """A class's IoU when only the classes ``labelled`` are labelled (rows of the others
    ignored), from a confusion matrix (rows: truth, columns: prediction)."""
    tp = confusion[source_index, source_index]
    fn = confusion[source_index].sum() - tp
    fp = sum(confusion[r, source_index] for r in labelled if r != source_index)
    return float(tp / (tp + fn + fp))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the demo model trains in its fixture: ~2 minutes on 2 idle cores
def test_matched_classes_score_as_the_source_before_any_step(demo_release, tmp_path, monkeypatch,
                                                            http_server, in_process):
    import numpy as np

    from mit_semseg.data.loader import seed_everything
    from mit_semseg.models import build_segmentation_model

    source = demo_release / "run"
    for name in DEMO_RUN_FILES:
        http_server.serve(f"/synthetic-demo/{name}", (source / name).read_bytes())
    monkeypatch.setenv("MIT_SEMSEG_MODEL_MIRROR", http_server.url)
    monkeypatch.setenv("MIT_SEMSEG_HOME", str(tmp_path / "home"))
    images, masks = relabelled(demo_release / "data", tmp_path, "training", TRAIN_VALUES)
    val_images, val_masks = relabelled(demo_release / "data", tmp_path, "validation", VAL_VALUES)
    (tmp_path / "classes.csv").write_text(TARGET_CSV)
    monkeypatch.chdir(tmp_path)
    assert run_prepare("--images", str(images), "--masks", str(masks), "--val-images",
                       str(val_images), "--val-masks", str(val_masks), "--out", "mine",
                       "--ignore-index", "255", "--classes", "classes.csv", "--recipe", DEMO,
                       "--init-from", "synthetic-demo", "TRAIN.num_epoch", "1",
                       "TRAIN.epoch_iters", "1", "TRAIN.workers", "0", "VAL.workers", "0",
                       *NO_STEP) == 0
    config = tmp_path / "mine" / "config.yaml"
    code, out = in_process("train.py", "--cfg", str(config))
    assert code == 0, out
    assert ("classes matched (4 of 5): Background <- background, red circle <- red disc, "
            "BLUE TRIANGLE <- blue triangle, yellow disc <- yellow disc; new: water") in out
    code, out = in_process("eval.py", "--cfg", str(config))
    assert code == 0, out
    # before any step, the matched classes score what the source scores on the same pixels
    ours = {c["name"]: c["iou"] for c in json.loads(
        (tmp_path / "ckpt" / "mine" / "eval_metrics.json").read_text())["per_class"]}
    theirs = json.loads((source / "eval_metrics.json").read_text())["per_class"]
    index = {c["name"]: c["index"] for c in theirs}
    confusion = np.load(source / "confusion_matrix.npy")
    labelled = [index[n] for n in MATCHED.values()]
    measured = {mine: (round(ours[mine], 4),
                       round(restricted_iou(confusion, index[name], labelled), 4),
                       round(theirs[index[name]]["iou"], 4)) for mine, name in MATCHED.items()}
    print("IoU (fine-tuned before any step, source on the same pixels, source on all its "
          f"classes): {measured}")
    differences = [ours_iou - reference for ours_iou, reference, _ in measured.values()]
    assert max(abs(d) for d in differences) <= IOU_TOLERANCE, measured
    assert abs(sum(differences) / len(differences)) <= MEAN_IOU_TOLERANCE, measured
    assert min(iou for iou, _, _ in measured.values()) > 0.25  # the copied rows predict
    # the new class's rows are the fresh initialisation train.py's seed gives
    seed_everything(load_config(config).TRAIN.seed)
    fresh = build_segmentation_model(*ARCH_OF_DEMO, 5, fc_dim=320).decoder.state_dict()
    started = decoder_file(config)
    demo = torch.load(source / f"decoder_epoch_{DEMO_EPOCHS}.pth", weights_only=True)
    for key in ("conv_last.weight", "conv_last.bias", "conv_last_deepsup.weight",
                "conv_last_deepsup.bias"):
        assert torch.equal(started[key][4], fresh[key][4]), key
        assert torch.equal(started[key][:4], demo[key][[0, 1, 3, 4]]), key

