import colorsys
import hashlib

import numpy as np
import pytest

from mit_semseg.data.image_io import read_image, read_label
from mit_semseg.data.odgt import read_odgt
from mit_semseg.data.palette import dataset_palette
from mit_semseg.data.synthetic import CLASSES, SYNTHETIC_NUM_CLASS, generate, main
from mit_semseg.models.classes import load_class_info


def _digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


def test_same_seed_gives_identical_files(tmp_path):
    a = _digest(generate(tmp_path / "a", num_train=4, num_val=2, seed=11))
    b = _digest(generate(tmp_path / "b", num_train=4, num_val=2, seed=11))
    c = _digest(generate(tmp_path / "c", num_train=4, num_val=2, seed=12))
    assert a == b
    assert len(a) == 4 * 2 + 2 * 2 + 3
    images = [k for k in a if k.startswith("images/")]
    assert all(a[k] != c[k] for k in images)


def test_layout_labels_and_class_table(synthetic_root):
    assert SYNTHETIC_NUM_CLASS == len(CLASSES) == 8
    info = load_class_info(synthetic_root / "object_info.csv")
    assert info["names"] == [c.name for c in CLASSES]
    seen = np.zeros(SYNTHETIC_NUM_CLASS + 1, bool)
    orientations = set()
    for split, count in (("training", 12), ("validation", 3)):
        records, _ = read_odgt(synthetic_root / f"{split}.odgt")
        assert len(records) == count
        for r in records:
            assert r["fpath_img"].startswith(f"images/{split}/")
            image = read_image(synthetic_root / r["fpath_img"])
            label = read_label(synthetic_root / r["fpath_segm"])
            assert image.shape[:2] == label.shape == (r["height"], r["width"])
            assert 96 <= r["height"] <= 160 and 96 <= r["width"] <= 160
            assert label.max() <= SYNTHETIC_NUM_CLASS
            seen[np.unique(label)] = True
            orientations.add(r["height"] > r["width"])
    assert seen.all()  # unlabeled outlines and every class occur
    assert orientations == {True, False}


def test_classes_are_separable_by_colour(tmp_path):
    root = generate(tmp_path, num_train=10, num_val=0, seed=1)
    sums = np.zeros((SYNTHETIC_NUM_CLASS + 1, 3))
    counts = np.zeros(SYNTHETIC_NUM_CLASS + 1)
    records, _ = read_odgt(root / "training.odgt")
    for r in records:
        image = read_image(root / r["fpath_img"]).reshape(-1, 3).astype(float)
        label = read_label(root / r["fpath_segm"]).ravel()
        np.add.at(sums, label, image)
        counts += np.bincount(label, minlength=len(counts))
    means = sums[1:] / counts[1:, None]
    bases = np.array([c.rgb for c in CLASSES], float)
    # the mean colour of every class is nearest to its own base colour
    nearest = np.linalg.norm(means[:, None] - bases[None], axis=2).argmin(1)
    assert nearest.tolist() == list(range(SYNTHETIC_NUM_CLASS))


def test_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--num-train", "2", "--num-val", "1", "--seed", "4"])
    assert exit_info.value.code == 0
    assert len(read_odgt(tmp_path / "training.odgt")[0]) == 2
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--num-train", "0", "--num-val", "0"])
    assert "at least one image" in capsys.readouterr().err


# hue (degrees) of each colour word in the class names
HUES = {"red": 0, "orange": 30, "yellow": 60, "green": 120, "cyan": 180, "blue": 240,
        "magenta": 300}


def test_pictures_draw_each_class_in_the_colour_its_name_says(synthetic_root):
    palette = dataset_palette(SYNTHETIC_NUM_CLASS, synthetic_root)
    np.testing.assert_array_equal(palette, [c.rgb for c in CLASSES])  # as in the images
    for name, rgb in zip(load_class_info(synthetic_root / "object_info.csv")["names"], palette):
        hue, _, saturation = colorsys.rgb_to_hls(*(rgb / 255.0))
        word = name.split()[0]
        if word == "background":
            assert saturation < 0.1, (name, rgb)  # grey
            continue
        error = abs((hue * 360 - HUES[word] + 180) % 360 - 180)
        assert error <= 15 and saturation > 0.5, (name, rgb, hue * 360)
