import json
import os
import shutil

import numpy as np
import pytest
from large_images import write_blank_png

from mit_semseg.data import check
from mit_semseg.data.check import check_dataset, main, read_header
from mit_semseg.data.image_io import read_label
from mit_semseg.data.odgt import read_odgt


def test_clean_dataset_passes_with_true_statistics(synthetic_root):
    report = check_dataset(synthetic_root / "validation.odgt", num_class=8)
    assert report.ok and report.num_records == report.num_checked == 3
    # independent count of the label pixels
    counts = np.zeros(9, np.int64)
    for record in read_odgt(synthetic_root / "validation.odgt")[0]:
        counts += np.bincount(read_label(synthetic_root / record["fpath_segm"]).ravel(),
                              minlength=9)
    np.testing.assert_array_equal(report.pixel_counts, counts)
    assert "unlabeled (0)" in report.format()


def test_every_problem_is_reported_with_its_line(synthetic_root, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(synthetic_root, root)
    records, _ = read_odgt(root / "training.odgt")
    lines = [json.dumps(r) for r in records[:6]]
    lines[1] = lines[1][:-5]  # malformed JSON
    lines[2] = json.dumps(dict(records[2], fpath_img="images/none.jpg"))  # missing file
    (root / records[3]["fpath_img"]).write_bytes(b"\xff\xd8garbage")  # unreadable
    lines[4] = json.dumps(dict(records[4], width=records[4]["width"] + 1))  # size mismatch
    lines[5] = json.dumps(dict(records[5], fpath_segm=records[0]["fpath_segm"]))  # wrong label
    (root / "bad.odgt").write_text("\n".join(lines) + "\n")
    report = check_dataset(root / "bad.odgt", num_class=3)  # synthetic has 8 classes
    text = "\n".join(report.problems)
    assert "bad.odgt:2: malformed JSON" in text
    assert "bad.odgt:3:" in text and "none.jpg" in text
    assert "bad.odgt:4:" in text and records[3]["fpath_img"] in text
    assert "bad.odgt:5: list says" in text
    assert "bad.odgt:6: label" in text
    assert any(p.startswith(f"{root / 'bad.odgt'}:1:") and "> num_class 3" in p
               for p in report.problems)
    assert report.out_of_range and min(report.out_of_range) == 4
    assert not report.ok


def test_empty_list_and_command_line(tmp_path, synthetic_root, capsys):
    (tmp_path / "e.odgt").write_text("")
    assert "no valid record" in check_dataset(tmp_path / "e.odgt", 5).problems[0]
    with pytest.raises(SystemExit) as exit_info:
        main([str(synthetic_root / "validation.odgt"), "--num-class", "8",
              "--class-info", str(synthetic_root / "object_info.csv")])
    assert exit_info.value.code == 0
    assert "red disc" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "e.odgt"), "--num-class", "8"])
    assert exit_info.value.code == 1


def _bad_copy(synthetic_root, tmp_path):
    """A copy of the synthetic training set whose list has one bad line of each kind that a
    header check finds, and the line numbers of the bad lines."""
    from PIL import Image

    root = tmp_path / "ds"
    shutil.copytree(synthetic_root, root)
    records, _ = read_odgt(root / "training.odgt")
    lines = [json.dumps(r) for r in records[:9]]
    lines[1] = lines[1][:-5]  # 2: malformed JSON
    lines[2] = json.dumps(dict(records[2], fpath_img="images/none.jpg"))  # 3: missing file
    (root / records[3]["fpath_img"]).write_bytes(b"garbage, not an image")  # 4: unreadable
    jpeg = root / records[4]["fpath_img"]  # 5: truncated (an interrupted copy): header intact
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    lines[5] = json.dumps(dict(records[5], height=records[5]["height"] + 1))  # 6: list size
    colour = root / records[6]["fpath_segm"]  # 7: colour label map
    Image.open(colour).convert("RGB").save(colour)
    png = root / records[7]["fpath_segm"]  # 8: truncated label PNG
    png.write_bytes(png.read_bytes()[:-20])
    (root / "bad.odgt").write_text("\n".join(lines) + "\n")
    return root, [2, 3, 4, 5, 6, 7, 8]


def test_headers_only_finds_every_file_level_problem_without_decoding(synthetic_root, tmp_path,
                                                                      monkeypatch):
    root, bad_lines = _bad_copy(synthetic_root, tmp_path)
    decoded = []
    for name in ("read_image", "read_label"):
        real = getattr(check, name)
        monkeypatch.setattr(check, name, lambda path, *limit, real=real, **named_limit:
                            decoded.append(path) or real(path, *limit, **named_limit))
    report = check_dataset(root / "bad.odgt", num_class=8, full=False)
    found = sorted({int(p.split("bad.odgt:")[1].split(":")[0]) for p in report.problems})
    assert found == bad_lines
    assert (report.num_lines, report.num_records, report.num_bad) == (9, 8, 7)
    text = "\n".join(report.problems)
    assert "truncated JPEG" in text and "truncated PNG" in text and "has mode RGB" in text
    assert "list says" in text and "none.jpg" in text
    # only the file whose header Pillow cannot read is decoded (OpenCV may still read it)
    assert [os.path.basename(p) for p in decoded] == [
        os.path.basename(read_odgt(synthetic_root / "training.odgt")[0][3]["fpath_img"])]
    # the full check agrees on every line
    full = check_dataset(root / "bad.odgt", num_class=8)
    assert sorted({int(p.split("bad.odgt:")[1].split(":")[0]) for p in full.problems}) == (
        bad_lines)


def test_label_values_need_the_full_check(synthetic_root):
    # num_class 3 while the synthetic labels go up to 8: the headers cannot tell
    assert check_dataset(synthetic_root / "validation.odgt", num_class=3, full=False).ok
    assert not check_dataset(synthetic_root / "validation.odgt", num_class=3).ok


def test_summary_names_the_first_problems_and_the_count(synthetic_root, tmp_path):
    root, _ = _bad_copy(synthetic_root, tmp_path)
    report = check_dataset(root / "bad.odgt", num_class=8, full=False, threads=3)
    summary = report.summary(max_problems=2)
    assert "\n" not in summary
    assert summary.startswith(f"7 of 9 line(s) bad: {root / 'bad.odgt'}:2: malformed JSON")
    assert f"; {root / 'bad.odgt'}:3: " in summary
    assert summary.endswith(f"; and {len(report.problems) - 2} more problem(s)")
    # threads read the files, the problems still come in list order
    assert report.problems == check_dataset(root / "bad.odgt", 8, full=False,
                                            threads=1).problems


def test_read_header_does_not_decode(tmp_path):
    from PIL import Image, ImageOps

    path = tmp_path / "a.png"
    Image.new("L", (7, 5)).save(path)
    assert read_header(path) == (7, 5, "L")
    # a phone photo stored sideways: images are read upright, labels as stored
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        photo = tmp_path / f"o{orientation}.jpg"
        Image.new("RGB", (7, 5)).save(photo, exif=exif)
        with Image.open(photo) as image:
            upright = ImageOps.exif_transpose(image).size
        assert read_header(photo)[:2] == upright
        assert read_header(photo, upright=False)[:2] == (7, 5)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_header(tmp_path / "none.png")


def test_headers_only_command_line(tmp_path, synthetic_root, capsys):
    root, _ = _bad_copy(synthetic_root, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(root / "bad.odgt"), "--num-class", "8", "--headers-only"])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "bad lines: 7" in out and "truncated JPEG" in out and "pixels%" not in out


@pytest.mark.parametrize("depth", [["--headers-only"], []])
def test_a_decompression_bomb_is_reported_with_its_line_and_size(depth, synthetic_root,
                                                                 tmp_path, capsys):
    lines = (synthetic_root / "validation.odgt").read_text().splitlines()
    bomb = write_blank_png(tmp_path / "bomb.png")  # 20000x20000 pixels in ~50 KB
    lines[0] = json.dumps(dict(json.loads(lines[0]), fpath_segm=str(bomb)))
    odgt = tmp_path / "list.odgt"
    odgt.write_text("\n".join(lines) + "\n")
    argv = [str(odgt), "--num-class", "8", "--root", str(synthetic_root)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + depth)
    out = capsys.readouterr().out
    assert exit_info.value.code == 1
    assert (f"PROBLEM {odgt}:1: {bomb}: 20000x20000 = 400,000,000 pixels, more than the limit "
            "of 89,478,485") in out
    assert "bad lines: 1," in out  # the other lines are checked as usual
    # --max-image-pixels sets the limit (DATASET.max_image_pixels of the scripts)
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--headers-only", "--max-image-pixels", "4000"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 1 and "more than the limit of 4,000" in out


def test_class_weights_balance_median_frequency(synthetic_root, capsys):
    report = check_dataset(synthetic_root / "validation.odgt", num_class=8)
    counts = report.pixel_counts[1:].astype(float)
    shares = counts / counts.sum()
    median = np.median(shares[shares > 0])
    weights = report.class_weights()
    for share, weight in zip(shares, weights):
        expected = 1.0 if share == 0 else min(median / share, check.MAX_CLASS_WEIGHT)
        assert weight == pytest.approx(expected, abs=1e-4)
    # a class of a few pixels weighs at most the cap; the command line prints an override
    report.pixel_counts[1] = 1
    assert max(report.class_weights()) == check.MAX_CLASS_WEIGHT
    with pytest.raises(SystemExit):
        main([str(synthetic_root / "validation.odgt"), "--num-class", "8", "--class-weights"])
    line = capsys.readouterr().out.splitlines()[-1]
    assert line == f'TRAIN.class_weights "{check.format_weights(weights)}"'
    from mit_semseg.config import load_config

    cfg = load_config(None, ["DATASET.num_class", "8", "TRAIN.class_weights", line.split('"')[1]])
    assert list(cfg.TRAIN.class_weights) == pytest.approx(weights, abs=1e-4)
    with pytest.raises(ValueError, match="full check"):
        check_dataset(synthetic_root / "validation.odgt", 8, full=False).class_weights()
