"""python -m mit_semseg.data.prepare on real photographs with masks in each convention: the
stored masks hold the true classes in the package's convention, the class table and config are
what the scripts read, and bad input stops with one line, exit status 2 and nothing written.
(tests/cli/test_own_data.py trains, evaluates and segments the prepared datasets.)"""

import json
import re
import shutil

import numpy as np
import pytest
from own_data import (
    CLASSES,
    COLOURS,
    PHOTOS,
    classes_of,
    encode,
    photo,
    write_image,
    write_photo_dataset,
)

from mit_semseg.config import load_config
from mit_semseg.data.check import check_dataset
from mit_semseg.data.image_io import read_image, read_label
from mit_semseg.data.odgt import read_odgt
from mit_semseg.data.prepare import main
from mit_semseg.models.classes import load_class_info

# the flags of each convention (the masks of tests/own_data.py)
CONVENTIONS = {
    "index": ["--classes", "classes.csv"],
    "ignore255": ["--ignore-index", "255", "--classes", "classes.csv"],
    "colour": ["--mask-format", "colour", "--classes", "classes.csv", "--ignore-colour", "0,0,0"],
    "binary": ["--mask-format", "binary"],
}
TINY = ["--recipe", "synthetic-mobilenetv2dilated-c1_deepsup", "TRAIN.num_epoch", "1"]


def run(tmp_path, capsys, *args):
    """``main(args)`` in ``tmp_path``; returns ``(exit status, stdout, stderr)``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        try:
            main(list(args))
            code = 0
        except SystemExit as stop:
            code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def expected_label(name, convention):
    """The class values the stored mask of ``name`` must hold (0 = unlabeled, 1..K)."""
    truth = classes_of(photo(name))
    if convention == "binary":
        return np.where(truth == 2, 2, 1)
    return truth + 1  # unlabeled -1 -> 0


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_each_convention_becomes_the_packages(convention, tmp_path, capsys):
    write_photo_dataset(tmp_path, convention)
    code, out, err = run(tmp_path, capsys, "--images", "photos", "--masks", "masks", "--out",
                         "data/mine", *CONVENTIONS[convention], *TINY)
    assert code == 0, err
    root = tmp_path / "data" / "mine"
    names = ["background", "foreground"] if convention == "binary" else list(CLASSES)
    info = load_class_info(root / "object_info.csv")
    assert info["names"] == names
    if convention != "binary":  # the table's colours are the pictures' colours
        assert info["colors"].tolist() == [list(c) for c in COLOURS]
    # the split: 6 photographs, a fifth held out, every photograph once
    records = {split: read_odgt(root / f"{split}.odgt")[0] for split in ("training",
                                                                          "validation")}
    assert [len(records["training"]), len(records["validation"])] == [5, 1]
    seen = []
    for record in records["training"] + records["validation"]:
        name = record["fpath_img"].rsplit("/", 1)[-1][:-4]
        seen.append(name)
        label = read_label(root / record["fpath_segm"])
        np.testing.assert_array_equal(label, expected_label(name, convention))
        assert read_image(record["fpath_img"]).shape[:2] == (record["height"], record["width"])
    assert sorted(seen) == sorted(PHOTOS)
    # the config: the scripts' loader takes it as it is, pointing at the dataset
    cfg = load_config(root / "config.yaml")
    assert cfg.DATASET.num_class == len(names)
    assert cfg.DATASET.root_dataset == str(root)
    assert cfg.DATASET.list_train == str(root / "training.odgt")
    assert cfg.DIR == str(tmp_path / "ckpt" / "mine")
    assert cfg.VAL.checkpoint == cfg.TEST.checkpoint == "epoch_1.pth"
    assert (cfg.MODEL.arch_encoder, cfg.MODEL.init_from) == ("mobilenetv2dilated", "")
    # the checker's per-class pixel shares, printed at the end, are the masks' own
    report = check_dataset(root / "training.odgt", len(names), root)
    shares = 100 * report.pixel_counts[1:] / report.pixel_counts[1:].sum()
    for name, share in zip(names, shares):
        assert f"  {share:>8.3f}  " in out and name in out
    assert "Train: python train.py --cfg data/mine/config.yaml" in out


def test_val_folders_seed_and_overrides(tmp_path, capsys):
    write_photo_dataset(tmp_path, "index", PHOTOS[:4])
    write_photo_dataset(tmp_path, "index", PHOTOS[4:], images="val_photos", masks="val_masks")
    code, _, err = run(tmp_path, capsys, "--images", "photos", "--masks", "masks",
                       "--val-images", "val_photos", "--val-masks", "val_masks",
                       "--out", "mine", "--run-dir", "runs/a", "--class-weights",
                       *TINY, "TRAIN.lr_decoder", "0.5")
    assert code == 0, err
    cfg = load_config(tmp_path / "mine" / "config.yaml")
    val = read_odgt(tmp_path / "mine" / "validation.odgt")[0]
    assert sorted(r["fpath_img"].rsplit("/", 1)[-1] for r in val) == ["camera.jpg", "cat.jpg"]
    assert cfg.DIR == str(tmp_path / "runs" / "a") and cfg.TRAIN.lr_decoder == 0.5
    # median-frequency weights from the training shares: the median class weighs 1
    report = check_dataset(tmp_path / "mine" / "training.odgt", 3, tmp_path / "mine")
    shares = report.pixel_counts[1:] / report.pixel_counts[1:].sum()
    expected = np.median(shares) / shares
    np.testing.assert_allclose(cfg.TRAIN.class_weights, expected, rtol=1e-3)
    assert sorted(cfg.TRAIN.class_weights)[1] == pytest.approx(1.0)
    # the ratio split is a function of the seed
    for out in ("s0", "s0_again", "s1"):
        seed = "1" if out == "s1" else "0"
        assert run(tmp_path, capsys, "--images", "photos", "--masks", "masks", "--out", out,
                   "--seed", seed, "--val-ratio", "0.5", *TINY)[0] == 0
    held_out = {out: (tmp_path / out / "validation.odgt").read_text()
                for out in ("s0", "s0_again", "s1")}
    assert held_out["s0"] == held_out["s0_again"] != held_out["s1"]


def test_fine_tuning_a_released_model_uses_its_recipe(tmp_path, capsys):
    write_photo_dataset(tmp_path, "index", PHOTOS[:2])
    code, _, err = run(tmp_path, capsys, "--images", "photos", "--masks", "masks", "--out",
                       "mine", "--init-from", "ade20k-resnet18dilated-c1_deepsup")
    assert code == 0, err
    cfg = load_config(tmp_path / "mine" / "config.yaml")
    assert (cfg.MODEL.arch_encoder, cfg.MODEL.arch_decoder, cfg.MODEL.fc_dim) == (
        "resnet18dilated", "c1_deepsup", 512)
    assert cfg.MODEL.init_from == "ade20k-resnet18dilated-c1_deepsup"
    assert cfg.TRAIN.lr_encoder == pytest.approx(cfg.TRAIN.lr_decoder / 10)
    assert cfg.DATASET.num_class == 3 and cfg.VAL.checkpoint == "epoch_20.pth"
    # a run folder is stored as an absolute path, so train.py finds it from anywhere
    (tmp_path / "run").mkdir()
    assert run(tmp_path, capsys, "--images", "photos", "--masks", "masks", "--out", "mine2",
               "--init-from", "run", *TINY)[0] == 0
    assert load_config(tmp_path / "mine2" / "config.yaml").MODEL.init_from == str(
        tmp_path / "run")


def _bad(tmp_path, capsys, *args):
    """Runs ``args`` expecting a refusal; returns the error line (checks there is one)."""
    code, out, err = run(tmp_path, capsys, "--out", "data/mine", *args)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("python -m mit_semseg.data.prepare: error: "), err
    assert not (tmp_path / "data" / "mine").exists()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))  # no staging left
    return lines[-1]


def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    images, masks = write_photo_dataset(tmp_path, "colour")
    # colours missing from the table: each listed with its pixel count and a file holding it
    (tmp_path / "two.csv").write_text("name,r,g,b\nwall,120,120,120\nsky,6,230,230\n")
    error = _bad(tmp_path, capsys, "--images", "photos", "--masks", "masks", "--mask-format",
                 "colour", "--classes", "two.csv")
    assert "2 colour(s) that --classes two.csv lacks" in error
    assert f"(150, 5, 61) ({sum_of(masks, COLOURS[2])} px, e.g. " in error
    assert "(0, 0, 0) (" in error and "--ignore-colour R,G,B" in error
    # more classes in the masks than in the table
    shutil.rmtree(masks)
    for name in PHOTOS:
        write_image(masks / f"{name}.png", encode(classes_of(photo(name)), "index"))
    error = _bad(tmp_path, capsys, "--images", "photos", "--masks", "masks", "--classes",
                 "two.csv")
    assert "1 value(s) beyond the 2 classes of --classes two.csv (values 1..2, 0 = " in error
    assert "3 (" in error and "px, e.g. " in error and "--ignore-index" in error
    # a colour mask given as index masks
    write_photo_dataset(tmp_path, "colour", PHOTOS[:1], masks="rgb")
    error = _bad(tmp_path, capsys, "--images", "photos", "--masks", "rgb", "--allow-missing")
    assert "--images photos: 1 image(s) with a mask; a split needs 2 or more" in error
    write_photo_dataset(tmp_path, "colour", PHOTOS[:2], masks="rgb")
    error = _bad(tmp_path, capsys, "--images", "photos", "--masks", "rgb", "--allow-missing")
    assert re.search(r"rgb/(astronaut|coffee)\.png: a colour mask; give --mask-format colour "
                     r"and --classes CSV", error)
    # a mask whose size differs from its image
    write_image(masks / "coffee.png", np.ones((10, 12), np.uint8))
    error = _bad(tmp_path, capsys, "--images", "photos", "--masks", "masks")
    assert "coffee.png: mask is 12x10 but its image" in error and "coffee.jpg is 96x64" in error
    # an image without a mask
    (masks / "coffee.png").unlink()
    error = _bad(tmp_path, capsys, "--images", "photos", "--masks", "masks")
    assert "photos/coffee.jpg: no mask" in error and "--allow-missing" in error
    # an empty folder
    (tmp_path / "empty").mkdir()
    error = _bad(tmp_path, capsys, "--images", "empty", "--masks", "masks")
    assert "empty: no image files (.jpg, .jpeg" in error
    # contradictory flags, and an output folder that holds something
    assert "needs --classes" in _bad(tmp_path, capsys, "--images", "photos", "--masks", "masks",
                                     "--mask-format", "colour")
    (tmp_path / "data" / "mine").mkdir(parents=True)
    (tmp_path / "data" / "mine" / "keep.txt").write_text("mine")
    code, _, err = run(tmp_path, capsys, "--images", "photos", "--masks", "masks", "--out",
                       "data/mine")
    assert code == 2 and "exists and is not an empty folder" in err
    assert [p.name for p in (tmp_path / "data" / "mine").iterdir()] == ["keep.txt"]


def sum_of(folder, colour):
    """Pixels of ``colour`` in every mask of ``folder``."""
    return sum(int(np.all(read_image(p) == colour, axis=2).sum())
               for p in sorted(folder.glob("*.png")))


def test_an_interrupted_run_leaves_nothing(tmp_path, capsys, monkeypatch):
    from mit_semseg.data import prepare

    write_photo_dataset(tmp_path, "index")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "check_dataset", killed)  # after every mask was written
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, capsys, "--images", "photos", "--masks", "masks", "--out", "mine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.csv", "masks", "photos"]


def test_records_are_json_lines(tmp_path, capsys):
    write_photo_dataset(tmp_path, "binary", PHOTOS[:3])
    assert run(tmp_path, capsys, "--images", "photos", "--masks", "masks", "--out", "m",
               "--mask-format", "binary", *TINY)[0] == 0
    for line in (tmp_path / "m" / "training.odgt").read_text().splitlines():
        assert set(json.loads(line)) == {"fpath_img", "fpath_segm", "width", "height"}
