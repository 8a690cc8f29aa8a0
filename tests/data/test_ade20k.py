import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from local_http import unused_url

from mit_semseg.config import get_cfg_defaults
from mit_semseg.data import TrainDataset, ValDataset
from mit_semseg.data.ade20k import (
    DEFAULT_ROOT,
    FOLDER,
    NUM_CLASS,
    PrepareError,
    ResumableFetch,
    config_opts,
    main,
    unpack,
)
from mit_semseg.data.check import check_dataset
from mit_semseg.data.odgt import read_odgt
from mit_semseg.download import DownloadError, cached_download, sha256_file

REPO_ROOT = Path(__file__).resolve().parents[2]
URL_PATH = "/places/ADEchallenge/ADEChallengeData2016.zip"
# (split, file stem, height, width): both orientations, odd sizes, one grayscale photo
SAMPLES = [("training", "ADE_train_00000001", 48, 64), ("training", "ADE_train_00000002", 72, 40),
           ("training", "ADE_train_00000003", 45, 61), ("validation", "ADE_val_00000001", 56, 56),
           ("validation", "ADE_val_00000002", 40, 66)]


def _encode(ext, array):
    ok, data = cv2.imencode(ext, array)
    assert ok
    return data.tobytes()


def make_ade_zip(path: Path, skip_split: str = "", label_max: int = NUM_CLASS,
                 seed: int = 0) -> Path:
    """A miniature ADEChallengeData2016.zip: the real layout, names and file formats (JPEG
    photos, 8-bit grayscale PNG annotations with 0 = unlabeled, 1..150), plus the two text
    files of the release; ``seed`` draws the pixels."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{FOLDER}/", "")
        archive.writestr(f"{FOLDER}/objectInfo150.txt",
                         "Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n")
        archive.writestr(f"{FOLDER}/sceneCategories.txt", "ADE_train_00000001 airport_terminal\n")
        for index, (split, stem, height, width) in enumerate(SAMPLES):
            if split == skip_split:
                continue
            photo = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            if index == 1:
                photo = photo[:, :, 0]  # ADE20K has a few grayscale JPEGs
            label = rng.integers(0, label_max + 1, (height, width), dtype=np.uint8)
            archive.writestr(f"{FOLDER}/images/{split}/{stem}.jpg", _encode(".jpg", photo))
            archive.writestr(f"{FOLDER}/annotations/{split}/{stem}.png", _encode(".png", label))
    return path


@pytest.fixture(scope="module")
def ade_zip(tmp_path_factory) -> Path:
    return make_ade_zip(tmp_path_factory.mktemp("zip") / "ADEChallengeData2016.zip")


def expected_records(split):
    return [{"fpath_img": f"{FOLDER}/images/{split}/{stem}.jpg",
             "fpath_segm": f"{FOLDER}/annotations/{split}/{stem}.png",
             "width": width, "height": height}
            for s, stem, height, width in SAMPLES if s == split]


def test_the_configs_read_where_the_command_writes():
    configs = sorted((REPO_ROOT / "config").glob("ade20k-*.yaml"))
    assert len(configs) == 7
    for path in configs:
        cfg = get_cfg_defaults()
        cfg.merge_from_file(str(path))
        assert Path(cfg.DATASET.root_dataset).resolve() == Path(DEFAULT_ROOT).resolve()
        assert Path(cfg.DATASET.list_train) == Path(DEFAULT_ROOT) / "training.odgt"
        assert Path(cfg.DATASET.list_val) == Path(DEFAULT_ROOT) / "validation.odgt"
        assert cfg.DATASET.num_class == NUM_CLASS


def test_download_unpack_list_and_check(http_server, ade_zip, tmp_path, capsys):
    url = http_server.serve(URL_PATH, ade_zip.read_bytes())
    root = tmp_path / "data"
    assert main(["--root", str(root), "--url", url, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "training: records: 3, read: 3, bad lines: 0, problems: 0" in out
    assert "validation: records: 2, read: 2, bad lines: 0, problems: 0" in out
    assert "DATASET.root_dataset" in out  # not ./data: the command says how to point at it
    for split in ("training", "validation"):
        records, _ = read_odgt(root / f"{split}.odgt")
        assert records == expected_records(split)
        assert check_dataset(root / f"{split}.odgt", NUM_CLASS, root).ok
    assert (root / "ADEChallengeData2016.zip").read_bytes() == ade_zip.read_bytes()
    assert (root / "ADEChallengeData2016.zip.sha256").is_file()
    assert (root / FOLDER / "objectInfo150.txt").is_file()
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []
    # the configs' datasets load the lists (pointed at this root)
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(REPO_ROOT / "config" / "ade20k-resnet18dilated-ppm_deepsup.yaml"))
    cfg.merge_from_list(config_opts(root) + ["DATASET.imgSizes", "(32,)"])
    batch = TrainDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_train, cfg.DATASET,
                         batch_per_gpu=2, seed=0)[0]
    assert batch["img_data"].shape[:2] == (2, 3)
    val = ValDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_val, cfg.DATASET)
    assert len(val) == 2 and val[1]["seg_label"].shape[-2:] == (40, 66)
    # a second run reuses everything: no request
    assert main(["--root", str(root), "--url", url, "--no-progress"]) == 0
    assert len(http_server.hits(URL_PATH)) == 1


def test_zip_fetched_elsewhere_and_force(ade_zip, tmp_path, capsys):
    root = tmp_path / "data"
    assert main(["--root", str(root), "--zip", str(ade_zip), "--no-progress"]) == 0
    photo = root / FOLDER / "images" / "training" / "ADE_train_00000001.jpg"
    original = photo.read_bytes()
    photo.write_bytes(b"damaged")
    # the unpacked folder is kept, so the damage is found (and named) when listing
    assert main(["--root", str(root), "--zip", str(ade_zip), "--no-progress"]) == 2
    assert "ADE_train_00000001.jpg" in capsys.readouterr().err
    assert main(["--root", str(root), "--zip", str(ade_zip), "--force", "--no-progress"]) == 0
    assert photo.read_bytes() == original
    assert not (root / "ADEChallengeData2016.zip").exists()  # nothing was downloaded
    assert sorted(p.name for p in root.iterdir()) == [FOLDER, "training.odgt",
                                                      "validation.odgt"]


def test_bad_samples_are_reported_with_status_1(tmp_path, capsys):
    archive = make_ade_zip(tmp_path / "a.zip", label_max=NUM_CLASS + 5)
    assert main(["--root", str(tmp_path / "data"), "--zip", str(archive), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM" in out and "> num_class 150" in out and "mit_semseg.data.check" in out


def test_bad_archives_fail_in_one_line_and_leave_nothing(tmp_path, ade_zip, capsys):
    root = tmp_path / "data"
    cut = tmp_path / "cut.zip"
    cut.write_bytes(ade_zip.read_bytes()[:3000])
    assert main(["--root", str(root), "--zip", str(cut), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot open as a zip archive" in err and "cut.zip" in err
    partial = make_ade_zip(tmp_path / "partial.zip", skip_split="validation")
    assert main(["--root", str(root), "--zip", str(partial), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"missing {FOLDER}/images/validation/" in err
    assert list(root.iterdir()) == []
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr(f"{FOLDER}/../../escaped.txt", "x")
    with pytest.raises(PrepareError, match="unsafe member path"):
        unpack(evil, root)
    assert not (tmp_path / "escaped.txt").exists()


def test_a_cut_download_fails_then_resumes(http_server, ade_zip, tmp_path):
    url = http_server.serve(URL_PATH, ade_zip.read_bytes())
    http_server.drop_next(URL_PATH, after_bytes=4000, times=3)
    root = tmp_path / "data"
    assert main(["--root", str(root), "--url", url, "--no-progress"]) == 2
    assert sorted(p.name for p in root.iterdir()) == [
        "ADEChallengeData2016.zip.part", "ADEChallengeData2016.zip.part.validator"]
    assert main(["--root", str(root), "--url", url, "--no-progress"]) == 0
    assert http_server.hits(URL_PATH)[-1].headers["Range"] == "bytes=12000-"


def test_a_resume_from_a_server_that_ignores_if_range_never_mixes_versions(
        http_server, ade_zip, tmp_path):
    url = http_server.serve(URL_PATH, ade_zip.read_bytes())
    http_server.drop_next(URL_PATH, after_bytes=4000, times=3)
    root = tmp_path / "data"
    assert main(["--root", str(root), "--url", url, "--no-progress"]) == 2  # 12000 bytes kept
    # the archive is replaced on the server, which answers the range with the new version's
    # bytes (206) although If-Range names the old one
    new = make_ade_zip(tmp_path / "new.zip", seed=1).read_bytes()
    http_server.serve(URL_PATH, new)
    http_server.if_range_honoured = False
    assert main(["--root", str(root), "--url", url, "--no-progress"]) == 0
    assert (root / "ADEChallengeData2016.zip").read_bytes() == new
    assert [(r.status, r.headers.get("Range")) for r in http_server.hits(URL_PATH)][3:] == [
        (206, "bytes=12000-"), (200, None)]  # the 206 was refused, the file fetched whole
    assert (root / "ADEChallengeData2016.zip.sha256").read_text().startswith(
        hashlib.sha256(new).hexdigest())


def test_offline_is_one_line_with_the_manual_steps(tmp_path):
    url = unused_url("/ADEChallengeData2016.zip")
    result = subprocess.run(
        [sys.executable, "-m", "mit_semseg.data.ade20k", "--root", str(tmp_path), "--url", url],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("python -m mit_semseg.data.ade20k: error: cannot download")
    assert url in lines[0] and str(tmp_path / "ADEChallengeData2016.zip") in lines[0]
    assert "--zip PATH" in lines[0] and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no lock file left behind


# ----------------------------------------------------------------- the resumable transfer
GOOD = bytes(range(256)) * 1200  # 300 KiB: several read chunks are not needed, one drop is
OTHER = bytes(reversed(range(256))) * 1100


def download_resumably(url, path, attempts=3):
    return cached_download(url, path, progress=False, fetch=ResumableFetch(attempts=attempts))


def test_a_cut_download_leaves_only_a_part_file_and_the_next_call_resumes(http_server,
                                                                          tmp_path):
    url = http_server.serve("/w.pth", GOOD)
    path = tmp_path / "w.pth"
    http_server.drop_next("/w.pth", after_bytes=100_000)
    with pytest.raises(DownloadError) as info:
        download_resumably(url, path, attempts=1)
    message = str(info.value)
    assert "\n" not in message and url in message and str(path) in message
    assert "100000 of 307200 bytes" in message
    assert not path.exists() and not path.with_name("w.pth.sha256").exists()
    assert path.with_name("w.pth.part").stat().st_size == 100_000
    # a cut file is never loaded as the real one: the next call resumes where it stopped
    assert download_resumably(url, path).read_bytes() == GOOD
    first, second = http_server.hits("/w.pth")
    assert second.headers["Range"] == "bytes=100000-" and second.status == 206
    assert second.body_bytes == len(GOOD) - 100_000
    assert sha256_file(path) == hashlib.sha256(GOOD).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth", "w.pth.sha256"]


def test_drops_midway_are_resumed_within_one_call(http_server, tmp_path):
    url = http_server.serve("/w.pth", GOOD)
    http_server.drop_next("/w.pth", after_bytes=70_000, times=2)
    path = download_resumably(url, tmp_path / "w.pth", attempts=3)
    assert path.read_bytes() == GOOD
    assert [r.headers.get("Range") for r in http_server.hits("/w.pth")] == [
        None, "bytes=70000-", "bytes=140000-"]


def test_a_file_changed_during_a_resume_restarts_instead_of_mixing(http_server, tmp_path):
    url = http_server.serve("/w.pth", GOOD)
    http_server.drop_next("/w.pth", after_bytes=50_000)
    with pytest.raises(DownloadError):
        download_resumably(url, tmp_path / "w.pth", attempts=1)
    http_server.serve("/w.pth", OTHER)
    path = download_resumably(url, tmp_path / "w.pth")
    assert path.read_bytes() == OTHER  # If-Range mismatch: the whole new file was sent
    assert http_server.hits("/w.pth")[-1].status == 200


def test_a_server_without_ranges_or_with_a_shorter_file_starts_over(http_server, tmp_path):
    url = http_server.serve("/w.pth", GOOD)
    http_server.ranges_supported = False
    http_server.drop_next("/w.pth", after_bytes=80_000)
    assert download_resumably(url, tmp_path / "w.pth").read_bytes() == GOOD
    assert [r.status for r in http_server.hits("/w.pth")] == [200, 200]
    # a part longer than the file (416 for the range): thrown away, fetched whole
    http_server.ranges_supported = True
    short = GOOD[:1000]
    url = http_server.serve("/s.pth", short)
    (tmp_path / "s.pth.part").write_bytes(GOOD[:5000])
    (tmp_path / "s.pth.part.validator").write_text(http_server.files["/s.pth"].etag)
    assert download_resumably(url, tmp_path / "s.pth").read_bytes() == short
    assert [r.status for r in http_server.hits("/s.pth")] == [416, 200]


def test_a_206_of_another_version_restarts_from_zero(http_server, tmp_path):
    # a server that ignores If-Range answers the range with bytes of a new version of the same
    # length: only its ETag tells
    url = http_server.serve("/w.pth", GOOD)
    http_server.drop_next("/w.pth", after_bytes=50_000)
    with pytest.raises(DownloadError):
        download_resumably(url, tmp_path / "w.pth", attempts=1)
    new = bytes(reversed(GOOD))
    http_server.serve("/w.pth", new)
    http_server.if_range_honoured = False
    with pytest.raises(DownloadError, match="the file changed on the server"):
        download_resumably(url, tmp_path / "w.pth", attempts=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the old start is gone
    assert download_resumably(url, tmp_path / "w.pth").read_bytes() == new
    assert [(r.status, r.headers.get("Range")) for r in http_server.hits("/w.pth")] == [
        (200, None), (206, "bytes=50000-"), (200, None)]
