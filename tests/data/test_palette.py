
import numpy as np
import pytest

from mit_semseg.data.palette import dataset_classes, dataset_palette, resolve_class_names
from mit_semseg.models.classes import ADE20K_PALETTE, ade_palette, load_class_info


def test_dataset_palette_prefers_the_class_table_colours(tmp_path):
    np.testing.assert_array_equal(dataset_palette(150, None), ADE20K_PALETTE)
    (tmp_path / "object_info.csv").write_text("Idx,Name\n1,cat\n2,dog\n")
    np.testing.assert_array_equal(dataset_palette(3, tmp_path), ade_palette(3))
    (tmp_path / "object_info.csv").write_text("Idx,Name,Color\n1,cat,#ff8000\n2,dog,#00FF00\n")
    palette = dataset_palette(3, tmp_path)
    assert palette.tolist() == [[255, 128, 0], [0, 255, 0], list(ADE20K_PALETTE[2])]
    assert load_class_info(tmp_path / "object_info.csv")["colors"].tolist() == [
        [255, 128, 0], [0, 255, 0]]
    (tmp_path / "object_info.csv").write_text("Idx,Name,Color\n1,cat,orange\n")
    with pytest.raises(ValueError, match="object_info.csv:2: Color must look like #rrggbb"):
        dataset_palette(3, tmp_path)


def test_resolve_class_names(tmp_path):
    (tmp_path / "object_info.csv").write_text("Idx,Name\n1,cat;kitty\n2,dog\n")
    assert resolve_class_names(3, tmp_path) == ["cat", "dog", "class_2"]
    ade = resolve_class_names(150, tmp_path / "missing")
    assert ade[0] == "wall" and ade[2] == "sky" and len(ade) == 150
    assert resolve_class_names(2, None) == ["class_0", "class_1"]


def test_a_run_folders_table_comes_before_the_datasets(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    run.mkdir()
    data.mkdir()
    (data / "object_info.csv").write_text("name,r,g,b\nroad,1,2,3\ncar;auto,4,5,6\n")
    classes = dataset_classes(2, data, run)
    assert classes.names == ["road", "car"] and classes.synonyms[1] == ["car", "auto"]
    assert classes.palette.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert classes.source == data / "object_info.csv"
    (run / "object_info.csv").write_text("Idx,Name,Color\n1,lane,#0a0b0c\n")
    classes = dataset_classes(2, data, run)
    assert classes.names == ["lane", "class_1"] and classes.synonyms == [["lane"], ["class_1"]]
    assert classes.palette.tolist() == [[10, 11, 12], list(ade_palette(2)[1])]
    assert resolve_class_names(2, data, run) == classes.names
    assert dataset_palette(2, data, run).tolist() == classes.palette.tolist()
