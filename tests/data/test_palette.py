from pathlib import Path

import cv2
import numpy as np
import pytest

from mit_semseg.data.palette import OBJECT150_CSV, ade_palette, class_names, load_class_info

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_palette_is_deterministic_distinct_and_not_black():
    palette = ade_palette()
    assert palette.shape == (150, 3) and palette.dtype == np.uint8
    np.testing.assert_array_equal(palette, ade_palette(150))
    assert len({tuple(c) for c in palette}) == 150
    assert not (palette == 0).all(axis=1).any()
    # smaller palettes are prefixes: colours of the first classes never change
    np.testing.assert_array_equal(ade_palette(8), palette[:8])
    # every pair clearly apart in CIELAB (float conversion: L 0..100, a/b signed)
    lab = cv2.cvtColor(palette[None].astype(np.float32) / 255, cv2.COLOR_RGB2LAB)[0]
    dist = np.linalg.norm(lab[:, None] - lab[None], axis=2) + np.eye(150) * 1e9
    assert dist.min() >= 15
    palette[0] = 0
    assert ade_palette()[0].any()  # callers get a copy


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
