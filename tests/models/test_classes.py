from pathlib import Path

import cv2
import numpy as np
import pytest

from mit_semseg.models.classes import (
    ADE20K_PALETTE,
    OBJECT150_CSV,
    ade_palette,
    class_names,
    load_class_info,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# Published ADE20K colours (the original's data/color150.mat, as every ADE20K visualiser shows
# them): wall, building, sky, floor, tree, ..., person (class 12), ..., flag (class 149).
PUBLISHED = {0: (120, 120, 120), 1: (180, 120, 120), 2: (6, 230, 230), 3: (80, 50, 50),
             4: (4, 200, 3), 12: (150, 5, 61), 20: (0, 102, 200), 149: (92, 0, 255)}


def lab(rgb):
    """CIELAB (L 0..100) through the float conversion, independent of the package's helper."""
    return cv2.cvtColor(np.asarray(rgb, np.float32)[None] / 255, cv2.COLOR_RGB2LAB)[0]


def test_ade_palette_is_the_standard_ade20k_palette():
    palette = ade_palette()
    assert palette.shape == (150, 3) and palette.dtype == np.uint8
    for index, colour in PUBLISHED.items():
        assert tuple(palette[index]) == colour, index
    # the original shares one grey between road (6) and skyscraper (48); kept as published
    assert tuple(palette[6]) == tuple(palette[48]) == (140, 140, 140)
    assert len({tuple(c) for c in palette}) == 149
    np.testing.assert_array_equal(ade_palette(8), palette[:8])  # a class keeps its colour
    palette[0] = 0
    assert ade_palette()[0].any()  # callers get a copy
    assert not ADE20K_PALETTE.flags.writeable


def test_larger_datasets_get_distinct_extra_colours():
    palette = ade_palette(200)
    np.testing.assert_array_equal(palette[:150], ADE20K_PALETTE)
    np.testing.assert_array_equal(palette, ade_palette(200))  # deterministic
    extra = lab(palette[150:])
    used = lab(np.concatenate([[[0, 0, 0]], palette]))
    dist = np.linalg.norm(extra[:, None] - used[None], axis=2)
    dist[np.arange(50), np.arange(50) + 151] = np.inf  # distance of a colour to itself
    assert dist.min() >= 15  # clearly apart from black, the standard colours and each other
    with pytest.raises(ValueError, match="num_class"):
        ade_palette(-1)


def test_ade_class_table():
    info = load_class_info()
    assert info["idx"] == list(range(1, 151))
    names = info["names"]
    assert names[:5] == ["wall", "building", "sky", "floor", "tree"]
    assert names[-1] == "flag" and names[12] == "person"
    assert len(set(names)) == 150
    assert class_names() == names
    assert "edifice" in info["synonyms"][1]
    # the repo-root data/ copy is the same table
    assert (REPO_ROOT / "data" / "object150_info.csv").read_bytes() == OBJECT150_CSV.read_bytes()


def test_bad_class_tables(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("Idx,Label\n1,a\n")
    with pytest.raises(ValueError, match="missing column"):
        load_class_info(path)
    path.write_text("Idx,Name\n1,a\n3,b\n")
    with pytest.raises(ValueError, match="without gaps"):
        load_class_info(path)
    path.write_text("Idx,Name\nx,a\n")
    with pytest.raises(ValueError, match="t.csv:2"):
        load_class_info(path)
    with pytest.raises(FileNotFoundError):
        load_class_info(tmp_path / "none.csv")
