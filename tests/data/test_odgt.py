import json
import os

import numpy as np
import pytest
from conftest import write_label, write_rgb
from yacs.config import CfgNode

from mit_semseg.data import TestDataset, odgt
from mit_semseg.data.odgt import OdgtError, build_odgt, list_images, main, read_odgt, write_odgt


def test_write_read_round_trip(tmp_path):
    records = [{"fpath_img": "a.jpg", "fpath_segm": "a.png", "width": 3, "height": 2},
               {"fpath_img": "b é.jpg", "fpath_segm": "b.png", "width": 5, "height": 7}]
    write_odgt(tmp_path / "l.odgt", records)
    lines = (tmp_path / "l.odgt").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == records
    got, origins = read_odgt(tmp_path / "l.odgt")
    assert got == records and origins == [f"{tmp_path / 'l.odgt'}:1", f"{tmp_path / 'l.odgt'}:2"]
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("line,message", [
    ("[1, 2]", "expected a JSON object"),
    ('{"fpath_img": "a", "fpath_segm": "b", "width": 0, "height": 2}', "'width' must be"),
    ('{"fpath_img": "", "fpath_segm": "b", "width": 1, "height": 2}', "'fpath_img' must be"),
    ('{"fpath_img": "a", "width": 1, "height": 2}', "missing key"),
    ("{oops", "malformed JSON"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    good = '{"fpath_img": "a", "fpath_segm": "b", "width": 1, "height": 2}'
    (tmp_path / "l.odgt").write_text(f"{good}\n\n{line}\n")
    with pytest.raises(OdgtError, match=rf"l\.odgt:3: {message}"):
        read_odgt(tmp_path / "l.odgt")


def _dataset(tmp_path):
    rng = np.random.default_rng(0)
    for rel, (h, w) in {"a/x.JPG": (6, 9), "b.png": (5, 4)}.items():
        write_rgb(tmp_path / "images" / rel, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        stem = rel.rsplit(".", 1)[0]
        write_label(tmp_path / "masks" / f"{stem}.png", np.ones((h, w), np.uint8))
    (tmp_path / "images" / "notes.txt").write_text("not an image")


def test_build_odgt_pairs_by_relative_stem(tmp_path):
    _dataset(tmp_path)
    records = build_odgt(tmp_path / "images", tmp_path / "masks", tmp_path)
    assert records == [
        {"fpath_img": "images/a/x.JPG", "fpath_segm": "masks/a/x.png", "width": 9, "height": 6},
        {"fpath_img": "images/b.png", "fpath_segm": "masks/b.png", "width": 4, "height": 5},
    ]


@pytest.mark.parametrize("mask_shape", [(6, 10), (10, 6)])
def test_build_odgt_records_the_size_in_the_orientation_the_mask_fits(tmp_path, mask_shape):
    # a JPEG stored 6x10 whose EXIF tag turns it 90 degrees: the list holds the size of the
    # orientation the datasets use, the stored one unless only the upright image fits
    from PIL import Image

    (tmp_path / "images").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((6, 10, 3), np.uint8)).save(tmp_path / "images" / "p.jpg",
                                                         exif=exif)
    write_label(tmp_path / "masks" / "p.png", np.ones(mask_shape, np.uint8))
    [record] = build_odgt(tmp_path / "images", tmp_path / "masks", tmp_path)
    assert (record["height"], record["width"]) == mask_shape


def test_build_odgt_errors(tmp_path):
    _dataset(tmp_path)
    (tmp_path / "masks" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"b.png: no mask .*masks/b\.\* for this image; "
                                                r"add it, .* pass --allow-missing"):
        build_odgt(tmp_path / "images", tmp_path / "masks", tmp_path)
    assert len(build_odgt(tmp_path / "images", tmp_path / "masks", tmp_path,
                          allow_missing=True)) == 1
    write_label(tmp_path / "masks" / "b.png", np.ones((5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"b.png: mask is 5x5 but its image .*b.png is 4x5; "):
        build_odgt(tmp_path / "images", tmp_path / "masks", tmp_path)


def test_command_line_writes_a_list(tmp_path):
    _dataset(tmp_path)
    out = tmp_path / "train.odgt"
    with pytest.raises(SystemExit) as exit_info:
        main(["--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
              "--out", str(out)])
    assert exit_info.value.code == 0
    records, _ = read_odgt(out)
    assert records[0]["fpath_img"] == "images/a/x.JPG"  # relative to the folder of --out
    with pytest.raises(SystemExit) as exit_info:
        main(["--images", str(tmp_path / "none"), "--masks", str(tmp_path), "--out", str(out)])
    assert exit_info.value.code == 1


def test_list_images_expands_folders_and_lists(tmp_path):
    _dataset(tmp_path)
    images = tmp_path / "images"
    expected = [str(images / "a" / "x.JPG"), str(images / "b.png")]
    assert list_images(images) == expected
    (tmp_path / "list.txt").write_text("# test images\nimages/b.png\n\n")
    assert list_images([tmp_path / "list.txt", images / "a" / "x.JPG"]) == \
        [str(tmp_path / "images" / "b.png"), expected[0]]
    write_odgt(tmp_path / "t.odgt", [{"fpath_img": expected[1]}])
    assert list_images(str(tmp_path / "t.odgt")) == [expected[1]]
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        list_images([tmp_path / "missing.jpg"])
    (tmp_path / "x.doc").write_text("not an image")
    with pytest.raises(ValueError, match=r"x\.doc: not an image"):
        list_images(tmp_path / "x.doc")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        list_images(tmp_path / "empty")




def test_broken_symbolic_links_are_reported_not_skipped(tmp_path, caplog):
    images = tmp_path / "images"
    write_rgb(images / "a.png", np.zeros((4, 5, 3), np.uint8))
    (images / "b.jpg").symlink_to(tmp_path / "gone.jpg")
    with caplog.at_level("WARNING", logger="mit_semseg.data"):
        found = list_images(images)
    # kept in the list, and logged with the missing target
    assert found == [str(images / "a.png"), str(images / "b.jpg")]
    assert "1 broken symbolic link(s)" in caplog.text and "gone.jpg" in caplog.text
    dataset = TestDataset(found, CfgNode(dict(imgSizes=(8,), imgMaxSize=16, padding_constant=8)))
    assert dataset[0]["img_ori"].shape == (4, 5, 3)
    with pytest.raises(FileNotFoundError, match=r"b\.jpg: broken symbolic link .*gone\.jpg"):
        dataset[1]
    with pytest.raises(FileNotFoundError, match=r"b\.jpg: broken symbolic link"):
        list_images(images / "b.jpg")
    (tmp_path / "list.txt").write_text("images/b.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"b\.jpg: broken symbolic link.*list\.txt"):
        list_images(tmp_path / "list.txt")


def test_build_odgt_names_a_broken_mask_link(tmp_path):
    write_rgb(tmp_path / "images" / "a.png", np.zeros((4, 5, 3), np.uint8))
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "a.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(FileNotFoundError, match=r"masks/a\.png: broken symbolic link"):
        build_odgt(tmp_path / "images", tmp_path / "masks", tmp_path)


def test_find_recursive_sorted(tmp_path):
    for name in ("b/2.jpg", "a/1.jpg", "a/3.png", "c.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [os.path.relpath(p, tmp_path) for p in odgt.find_recursive(str(tmp_path))]
    assert found == ["c.jpg", os.path.join("a", "1.jpg"), os.path.join("b", "2.jpg")]
