from pathlib import Path

import cv2
import numpy as np
import pytest

from mit_semseg.models.classes import (
    ADE20K_PALETTE,
    CLASS_TABLE,
    OBJECT150_CSV,
    ade_palette,
    class_names,
    find_class_table,
    load_class_info,
    write_class_table,
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


def test_the_hand_written_form_and_the_written_table_read_alike(tmp_path):
    (tmp_path / "mine.csv").write_text("Name, R, G, B\nwall,120,120,120\n"
                                       '"person;people, crowd",150,5,61\n')
    mine = load_class_info(tmp_path / "mine.csv")
    assert mine["idx"] == [1, 2] and mine["names"] == ["wall", "person"]
    assert mine["synonyms"] == [["wall"], ["person", "people, crowd"]]
    assert mine["colors"].tolist() == [[120, 120, 120], [150, 5, 61]]
    write_class_table(tmp_path / "object_info.csv", mine["synonyms"], mine["colors"])
    assert (tmp_path / "object_info.csv").read_text() == (
        'Idx,Name,Color\n1,wall,#787878\n2,"person;people, crowd",#96053d\n')
    written = load_class_info(tmp_path / "object_info.csv")
    assert {k: written[k] for k in ("idx", "names", "synonyms")} == {
        k: mine[k] for k in ("idx", "names", "synonyms")}
    assert written["colors"].tolist() == mine["colors"].tolist()
    (tmp_path / "bad.csv").write_text("name,r,g,b\nwall,120,300,0\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: g must be an integer 0..255, got '300'"):
        load_class_info(tmp_path / "bad.csv")
    (tmp_path / "bad.csv").write_text("name,r,g,b\n ,1,2,3\n")
    with pytest.raises(ValueError, match="bad.csv:2: empty name"):
        load_class_info(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="names must be non-empty and free of ';'"):
        write_class_table(tmp_path / "x.csv", [["a;b"]], np.zeros((1, 3), np.uint8))


def test_find_class_table_prefers_the_first_folder_that_has_one(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / CLASS_TABLE).write_text("Idx,Name\n1,a\n")
    assert find_class_table(3, [tmp_path / "run", tmp_path / "data"]) == (
        tmp_path / "data" / CLASS_TABLE)
    (tmp_path / "run" / CLASS_TABLE).write_text("Idx,Name\n1,b\n")
    assert find_class_table(3, [None, tmp_path / "run", tmp_path / "data"]) == (
        tmp_path / "run" / CLASS_TABLE)
    assert find_class_table(150, [tmp_path / "none"]) == OBJECT150_CSV
    assert find_class_table(3, [tmp_path / "none"]) is None
