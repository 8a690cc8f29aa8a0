import json
import shutil

import numpy as np
import pytest

from mit_semseg.data.check import check_dataset, main
from mit_semseg.data.odgt import read_odgt
from mit_semseg.data.transforms import read_label


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
