import logging

import numpy as np
import pytest
import torch
from conftest import make_opt, random_pair, write_lines
from PIL import Image

from mit_semseg.data import ImageReadError, OdgtError, TestDataset, TrainDataset, ValDataset
from mit_semseg.data.image_io import read_image
from mit_semseg.data.odgt import read_odgt
from mit_semseg.data.transforms import normalize_image

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def _expected_image(image: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - MEAN) / STD


# ----------------------------------------------------------------------------- TrainDataset
def test_batch_shapes_strides_and_canvas(synthetic_root):
    opt = make_opt(imgSizes=(40, 56), imgMaxSize=72, padding_constant=16,
                   segm_downsampling_rate=4, random_flip=True, num_class=8)
    odgt = synthetic_root / "training.odgt"
    ds = TrainDataset(synthetic_root, str(odgt), opt, batch_per_gpu=3, seed=0)
    records, _ = read_odgt(odgt)
    for index in range(6):
        chosen, short, _ = ds.batch_plan(index)
        item = ds[index]
        images, labels = item["img_data"], item["seg_label"]
        # independent computation of the canvas from the list's sizes
        heights, widths = [], []
        for i in chosen:
            h, w = records[i]["height"], records[i]["width"]
            scale = min(short / min(h, w), 72 / max(h, w))
            heights.append(int(h * scale))
            widths.append(int(w * scale))
        canvas_h = -(-max(heights) // 16) * 16
        canvas_w = -(-max(widths) // 16) * 16
        assert images.shape == (3, 3, canvas_h, canvas_w) and images.dtype == torch.float32
        assert labels.shape == (3, canvas_h // 4, canvas_w // 4) and labels.dtype == torch.int64
        assert short in (40, 56)
        assert labels.min() >= -1 and labels.max() <= 7
        # one orientation per batch, as in the original
        assert len({records[i]["height"] > records[i]["width"] for i in chosen}) == 1


def test_padding_is_ignored_not_class_0(samples):
    # every pixel labelled 1 -> class 0 after the shift; two widths force canvas padding
    opt = make_opt(imgSizes=(40,), padding_constant=8, segm_downsampling_rate=4)
    records = [samples.add(np.full((40, 80, 3), 50, np.uint8), np.ones((40, 80), np.uint8)),
               samples.add(np.full((40, 50, 3), 50, np.uint8), np.ones((40, 50), np.uint8))]
    ds = TrainDataset(samples.root, str(samples.odgt(records)), opt, batch_per_gpu=2, seed=0)
    item = ds[0]
    chosen, _, _ = ds.batch_plan(0)
    labels, images = item["seg_label"], item["img_data"]
    assert labels.shape == (2, 10, 20)
    for b, i in enumerate(chosen):
        # label cells whose centre pixel (2 + 4k) lies inside the image
        cells = len(range(2, records[i]["width"], 4))
        assert (labels[b, :, :cells] == 0).all()
        assert (labels[b, :, cells:] == -1).all()
        assert (images[b, :, :, records[i]["width"]:] == 0).all()  # image padding = mean colour
    assert (labels == 0).sum() == 10 * 20 + 10 * 12


def test_label_shift_image_normalisation_and_downsampling(samples):
    rng = np.random.default_rng(0)
    image, label = random_pair(rng, 32, 48)
    opt = make_opt(imgSizes=(32,), padding_constant=8, segm_downsampling_rate=1)
    odgt = str(samples.odgt([samples.add(image, label)]))
    item = TrainDataset(samples.root, odgt, opt, seed=0)[0]
    assert item["seg_label"].shape == (1, 32, 48)
    np.testing.assert_array_equal(item["seg_label"][0].numpy(), label.astype(np.int64) - 1)
    torch.testing.assert_close(item["img_data"][0], _expected_image(image), rtol=0, atol=1e-5)
    # rate 4: the centre pixel of each 4x4 cell (the original's PIL nearest sampling)
    item = TrainDataset(samples.root, odgt, make_opt(segm_downsampling_rate=4), seed=0)[0]
    np.testing.assert_array_equal(item["seg_label"][0].numpy(),
                                  label[2::4, 2::4].astype(np.int64) - 1)


@pytest.mark.parametrize("rate", [1, 4])
def test_resized_training_labels_only_take_source_values(samples, rate):
    # blocks of classes 2 and 7: any interpolation would invent 3..6 along their borders
    rng = np.random.default_rng(7)
    label = np.where(rng.random((7, 10)) < 0.5, 2, 7).astype(np.uint8).repeat(5, 0).repeat(5, 1)
    image = rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8)
    odgt = str(samples.odgt([samples.add(image, label)]))
    opt = make_opt(imgSizes=(47,), num_class=8, segm_downsampling_rate=rate)
    item = TrainDataset(samples.root, odgt, opt, seed=0)[0]
    assert item["img_data"].shape[-2:] != label.shape  # 35x50 really is resized (to 47x67)
    values = set(item["seg_label"].unique().tolist())
    assert values <= {-1, 1, 6} and {1, 6} <= values


def test_flip_applies_to_image_and_label_alike(samples):
    rng = np.random.default_rng(1)
    image, label = random_pair(rng, 24, 40)
    odgt = str(samples.odgt([samples.add(image, label)]))
    ds = TrainDataset(samples.root, odgt, make_opt(imgSizes=(24,), random_flip=True), seed=3)
    flips = [ds.batch_plan(i)[2][0] for i in range(40)]
    assert any(flips) and not all(flips)
    for index in (flips.index(True), flips.index(False)):
        item = ds[index]
        want_img = image[:, ::-1] if flips[index] else image
        want_lbl = label[:, ::-1] if flips[index] else label
        torch.testing.assert_close(item["img_data"][0],
                                   _expected_image(np.ascontiguousarray(want_img)),
                                   rtol=0, atol=1e-5)
        np.testing.assert_array_equal(item["seg_label"][0].numpy(), want_lbl.astype(np.int64) - 1)
    no_flip = TrainDataset(samples.root, odgt, make_opt(imgSizes=(24,), random_flip=False), seed=3)
    assert not any(no_flip.batch_plan(i)[2][0] for i in range(40))


def test_items_are_a_function_of_seed_and_index(synthetic_root):
    odgt = str(synthetic_root / "training.odgt")
    opt = make_opt(imgSizes=(32, 48), imgMaxSize=64, random_flip=True, num_class=8)
    a = TrainDataset(synthetic_root, odgt, opt, batch_per_gpu=2, seed=7)
    b = TrainDataset(synthetic_root, odgt, opt, batch_per_gpu=2, seed=7)
    c = TrainDataset(synthetic_root, odgt, opt, batch_per_gpu=2, seed=8)
    for index in (5, 0, 17):  # any order
        torch.testing.assert_close(a[index], b[index], rtol=0, atol=0)
    plans_a = [a.batch_plan(i) for i in range(10)]
    assert plans_a != [c.batch_plan(i) for i in range(10)]


def test_one_pass_covers_every_sample(synthetic_root):
    odgt = str(synthetic_root / "training.odgt")
    ds = TrainDataset(synthetic_root, odgt, make_opt(num_class=8), batch_per_gpu=5, seed=0)
    records, _ = read_odgt(odgt)
    portrait = sum(r["height"] > r["width"] for r in records)
    assert ds.batches_per_pass == -(-portrait // 5) + -(-(len(records) - portrait) // 5)
    seen = {i for b in range(ds.batches_per_pass) for i in ds.batch_plan(b)[0]}
    assert seen == set(range(len(records)))
    # the next pass reshuffles
    first = [ds.batch_plan(b)[0] for b in range(ds.batches_per_pass)]
    second = [ds.batch_plan(b + ds.batches_per_pass)[0] for b in range(ds.batches_per_pass)]
    assert first != second


def test_torch_manual_seed_fixes_the_default_seed(synthetic_root):
    odgt = str(synthetic_root / "training.odgt")
    torch.manual_seed(123)
    a = TrainDataset(synthetic_root, odgt, make_opt(num_class=8))
    torch.manual_seed(123)
    b = TrainDataset(synthetic_root, odgt, make_opt(num_class=8))
    assert a.seed == b.seed == 123


def test_invalid_train_options(samples):
    odgt = str(samples.odgt([samples.add(*random_pair(np.random.default_rng(0), 8, 8))]))
    with pytest.raises(ValueError, match="multiple of segm_downsampling_rate"):
        TrainDataset(samples.root, odgt, make_opt(padding_constant=4, segm_downsampling_rate=8))
    with pytest.raises(ValueError, match="batch_per_gpu"):
        TrainDataset(samples.root, odgt, make_opt(), batch_per_gpu=0)


# ----------------------------------------------------------------------------- Val / Test
def test_val_dataset_multi_scale_and_full_label(samples):
    rng = np.random.default_rng(2)
    image, label = random_pair(rng, 30, 45)
    odgt = str(samples.odgt([samples.add(image, label)]))
    ds = ValDataset(samples.root, odgt, make_opt(imgSizes=(20, 30, 44), imgMaxSize=60))
    assert len(ds) == 1
    item = ds[0]
    np.testing.assert_array_equal(item["img_ori"], image)
    np.testing.assert_array_equal(item["seg_label"].numpy(), label[None].astype(np.int64) - 1)
    # short 20 -> 20x30 (rounded to 24x32); 30 -> 30x45 -> 32x48; 44 -> capped at 60: 40x60
    assert [tuple(t.shape) for t in item["img_data"]] == [(1, 3, 24, 32), (1, 3, 32, 48),
                                                         (1, 3, 40, 64)]
    assert item["info"] == "img/001.png"


def test_val_slices_may_be_empty(samples):
    records = [samples.add(*random_pair(np.random.default_rng(i), 8, 8)) for i in range(3)]
    odgt = str(samples.odgt(records))
    assert len(ValDataset(samples.root, odgt, make_opt(), start_idx=1, end_idx=3)) == 2
    assert len(ValDataset(samples.root, odgt, make_opt(), start_idx=3, end_idx=3)) == 0
    assert len(ValDataset(samples.root, odgt, make_opt(), max_sample=1)) == 1


def _tagged_jpeg(path, stored: np.ndarray, orientation: int) -> np.ndarray:
    """Writes a JPEG carrying an EXIF orientation tag; returns its pixels as stored (PIL)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    with Image.open(path) as im:  # the original's reading: the stored pixels, tag ignored
        return np.asarray(im.convert("RGB"))


def _labelled(samples, image_name: str, label: np.ndarray, height: int, width: int) -> dict:
    samples.root.joinpath("seg").mkdir(exist_ok=True)
    Image.fromarray(label).save(samples.root / "seg" / f"{label.shape[0]}x{label.shape[1]}.png")
    return {"fpath_img": image_name, "fpath_segm": f"seg/{label.shape[0]}x{label.shape[1]}.png",
            "width": width, "height": height}


def test_exif_tagged_image_takes_the_orientation_its_label_fits(samples, caplog, monkeypatch):
    from mit_semseg.data import image_io

    monkeypatch.setattr(image_io, "_ignored_orientation_reported", False)
    stored = np.random.default_rng(8).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    as_stored = _tagged_jpeg(samples.root / "photo.jpg", stored, 6)  # shown rotated 90 deg
    opt = make_opt(imgSizes=(24,))
    # a label of the stored size (e.g. ADE20K's): the stored pixels, as the original read them
    record = _labelled(samples, "photo.jpg", np.ones((24, 40), np.uint8), 24, 40)
    with caplog.at_level(logging.WARNING, logger="mit_semseg.data.image_io"):
        item = ValDataset(samples.root, [record], opt)[0]
        ValDataset(samples.root, [record], opt)[0]
    np.testing.assert_array_equal(item["img_ori"], as_stored)
    assert item["img_data"][0].shape == (1, 3, 24, 40)
    warnings = [r.getMessage() for r in caplog.records if "EXIF orientation 6" in r.getMessage()]
    assert len(warnings) == 1 and "photo.jpg" in warnings[0]  # once, naming the file
    batch = TrainDataset(samples.root, [record], make_opt(imgSizes=(24,)), batch_per_gpu=1,
                         seed=0)[0]
    assert batch["img_data"].shape[2:] == (24, 40)
    # a label drawn on the photo as a viewer shows it: the upright image
    record = _labelled(samples, "photo.jpg", np.ones((40, 24), np.uint8), 40, 24)
    item = ValDataset(samples.root, [record], opt)[0]
    np.testing.assert_array_equal(item["img_ori"], read_image(samples.root / "photo.jpg"))
    assert item["img_ori"].shape == (40, 24, 3) and item["seg_label"].shape == (1, 40, 24)
    # fitting neither orientation is an error naming the label
    record = _labelled(samples, "photo.jpg", np.ones((30, 30), np.uint8), 30, 30)
    with pytest.raises(ValueError, match=r"30x30\.png: label size 30x30 differs .* 40x24"):
        ValDataset(samples.root, [record], opt)[0]


def test_same_size_orientations_keep_the_stored_pixels(samples):
    # a 180-degree tag fits a label either way: the original's reading (stored) is kept
    stored = np.random.default_rng(9).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    as_stored = _tagged_jpeg(samples.root / "turned.jpg", stored, 3)
    record = _labelled(samples, "turned.jpg", np.ones((24, 40), np.uint8), 24, 40)
    item = ValDataset(samples.root, [record], make_opt())[0]
    np.testing.assert_array_equal(item["img_ori"], as_stored)
    assert not np.array_equal(item["img_ori"], read_image(samples.root / "turned.jpg"))


def test_panoramas_are_warned_about(samples, caplog):
    rng = np.random.default_rng(9)
    panorama = samples.add(*random_pair(rng, 16, 200))  # 32 px asked, 64 px cap: 5 px left
    photo = samples.add(*random_pair(rng, 30, 40))
    opt = make_opt(imgSizes=(32, 48), imgMaxSize=64)
    paths = [str(samples.root / r["fpath_img"]) for r in (panorama, photo)]
    dataset = TestDataset(paths, opt)
    with caplog.at_level("WARNING", logger="mit_semseg.data"):
        dataset[1]
        assert not caplog.records
        dataset[0]
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert message.startswith(paths[0]) and "200x16" in message and "scaled to 64x5" in message
    caplog.clear()
    odgt = str(samples.odgt([panorama, photo, panorama]))
    with caplog.at_level("WARNING", logger="mit_semseg.data"):
        TrainDataset(samples.root, odgt, opt, seed=0)
    # one warning for the whole list, naming each sample's list line
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert message.startswith("2 training sample(s)")
    assert "list.odgt:1" in message and "list.odgt:3" in message and "list.odgt:2" not in message


def test_test_dataset_sources(samples):
    rng = np.random.default_rng(3)
    records = [samples.add(*random_pair(rng, 16, 24)) for _ in range(2)]
    paths = [str(samples.root / r["fpath_img"]) for r in records]
    odgt = write_lines(samples.root / "test.odgt", [{"fpath_img": p} for p in paths])
    for source in ([{"fpath_img": p} for p in paths], str(odgt), paths, str(samples.root / "img")):
        ds = TestDataset(source, make_opt(imgSizes=(16,)))
        assert [ds[i]["info"] for i in range(len(ds))] == paths
        item = ds[1]
        assert "seg_label" not in item
        assert item["img_data"][0].shape == (1, 3, 16, 24)
        torch.testing.assert_close(item["img_data"][0][0], normalize_image(item["img_ori"]))


# ----------------------------------------------------------------------------- bad input
def test_missing_files_name_file_and_line(samples):
    rng = np.random.default_rng(4)
    good = samples.add(*random_pair(rng, 8, 8))
    missing_img = dict(good, fpath_img="img/none.png")
    missing_seg = dict(good, fpath_segm="seg/none.png")
    odgt = samples.odgt([good, missing_img, missing_seg])
    ds = ValDataset(samples.root, str(odgt), make_opt())
    with pytest.raises(FileNotFoundError, match=r"none\.png.*list\.odgt:2"):
        ds[1]
    with pytest.raises(FileNotFoundError, match=r"seg/none\.png.*list\.odgt:3"):
        ds[2]


def test_unreadable_and_truncated_images(samples):
    record = samples.add(*random_pair(np.random.default_rng(5), 16, 16))
    odgt = str(samples.odgt([record]))
    path = samples.root / record["fpath_img"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"001\.png.*list\.odgt:1"):
        ValDataset(samples.root, odgt, make_opt())[0]
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(ImageReadError, match=r"001\.png"):
        TrainDataset(samples.root, odgt, make_opt(), seed=0)[0]


def test_label_of_wrong_size(samples):
    image, _ = random_pair(np.random.default_rng(6), 16, 16)
    record = samples.add(image, np.ones((16, 12), np.uint8))
    with pytest.raises(ValueError, match=r"001\.png: label size 12x16 differs .*16x16.*:1"):
        ValDataset(samples.root, str(samples.odgt([record])), make_opt())[0]


def test_label_values_above_num_class(samples):
    label = np.ones((8, 8), np.uint8)
    label[3, 3] = 6
    record = samples.add(np.zeros((8, 8, 3), np.uint8), label)
    odgt = str(samples.odgt([record]))
    with pytest.raises(ValueError, match=r"label value 6 > num_class 5.*list\.odgt:1"):
        TrainDataset(samples.root, odgt, make_opt(num_class=5), seed=0)[0]
    assert ValDataset(samples.root, odgt, make_opt(num_class=6))[0]["seg_label"].max() == 5


def test_list_size_disagreeing_with_image(samples):
    record = samples.add(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.uint8), width=9)
    with pytest.raises(ValueError, match=r"8x8 but the list says 9x8"):
        ValDataset(samples.root, str(samples.odgt([record])), make_opt())[0]


def test_empty_and_malformed_lists(samples):
    (samples.root / "empty.odgt").write_text("\n\n")
    with pytest.raises(OdgtError, match="empty.odgt: empty"):
        TrainDataset(samples.root, str(samples.root / "empty.odgt"), make_opt())
    good = samples.add(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.uint8))
    bad = samples.root / "bad.odgt"
    bad.write_text(f'{__import__("json").dumps(good)}\n{{"fpath_img": "a.jpg",\n')
    with pytest.raises(OdgtError, match=r"bad\.odgt:2: malformed JSON"):
        ValDataset(samples.root, str(bad), make_opt())
    write_lines(bad, [good, {"fpath_img": "a.jpg", "width": 3, "height": 3}])
    with pytest.raises(OdgtError, match=r"bad\.odgt:2: missing key\(s\) fpath_segm"):
        TrainDataset(samples.root, str(bad), make_opt())
    write_lines(bad, [dict(good, width="8")])
    with pytest.raises(OdgtError, match=r"bad\.odgt:1: 'width' must be a positive integer"):
        ValDataset(samples.root, str(bad), make_opt())
    with pytest.raises(FileNotFoundError, match="nothere.odgt"):
        ValDataset(samples.root, str(samples.root / "nothere.odgt"), make_opt())


def test_compat_import_path():
    import mit_semseg.dataset as compat

    assert compat.TrainDataset is TrainDataset and compat.TestDataset is TestDataset


def _list_with_bad_samples(samples):
    """Six good 16x16 samples and, at lines 2, 4 and 6, a missing image, a corrupt image and a
    label value above num_class."""
    rng = np.random.default_rng(9)
    good = [samples.add(*random_pair(rng, 16, 16)) for _ in range(6)]
    corrupt = samples.add(*random_pair(rng, 16, 16))
    (samples.root / corrupt["fpath_img"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    label = np.ones((16, 16), np.uint8)
    label[0, 0] = 9
    out_of_range = samples.add(np.zeros((16, 16, 3), np.uint8), label)
    missing = dict(good[0], fpath_img="img/none.png")
    records = [good[0], missing, good[1], corrupt, good[2], out_of_range, *good[3:]]
    return str(samples.odgt(records)), {1, 3, 5}


def test_bad_samples_stop_the_stream_unless_skipped(samples, caplog, monkeypatch):
    odgt, bad = _list_with_bad_samples(samples)
    strict = TrainDataset(samples.root, odgt, make_opt(), batch_per_gpu=3, seed=0)
    first_bad = next(i for i in range(20) if bad & set(strict.batch_plan(i)[0]))
    with pytest.raises((FileNotFoundError, ValueError), match=r"list\.odgt:[246]"):
        strict[first_bad]

    skipping = TrainDataset(samples.root, odgt, make_opt(), batch_per_gpu=3, seed=0,
                            skip_bad_samples=True)
    loaded = []  # the records whose pairs went into the item, in slot order
    load_pair = skipping._load_pair

    def spy(record):
        pair = load_pair(record)
        loaded.append(record)
        return pair

    monkeypatch.setattr(skipping, "_load_pair", spy)
    with caplog.at_level(logging.WARNING, logger="mit_semseg.data.datasets"):
        for i in range(12):  # 4 passes over the 9 samples
            loaded.clear()
            item = skipping[i]
            planned, short, flips = skipping.batch_plan(i)
            assert not bad & set(loaded) and len(loaded) == 3
            assert [r for r in planned if r not in bad] == [r for r, p in zip(loaded, planned)
                                                           if p not in bad]
            # the item is exactly the one its good records (replacements included) make
            monkeypatch.setattr(strict, "batch_plan", lambda _, plan=(list(loaded), short,
                                                                      flips): plan)
            expected = strict[i]
            for key in ("img_data", "seg_label"):
                torch.testing.assert_close(item[key], expected[key], rtol=0, atol=0)
    assert sorted(m.split("list.odgt:")[1][0] for m in caplog.messages) == ["2", "4", "6"]


def test_replacements_are_a_function_of_seed_and_index(samples):
    """What keeps resumed and torchrun runs identical: item i does not depend on which items
    were read before it (nor in which process)."""
    odgt, bad = _list_with_bad_samples(samples)

    def make(seed):
        return TrainDataset(samples.root, odgt, make_opt(), batch_per_gpu=2, seed=seed,
                            skip_bad_samples=True)

    forward, backward = make(5), make(5)
    indices = [i for i in range(15) if bad & set(forward.batch_plan(i)[0])]
    assert len(indices) >= 3
    a = {i: forward[i] for i in indices}
    b = {i: backward[i] for i in reversed(indices)}
    for i in indices:
        for key in ("img_data", "seg_label"):
            torch.testing.assert_close(a[i][key], b[i][key], rtol=0, atol=0)


def test_a_list_of_only_bad_samples_still_fails(samples):
    rng = np.random.default_rng(10)
    good = samples.add(*random_pair(rng, 8, 8))
    odgt = str(samples.odgt([dict(good, fpath_img=f"img/none{i}.png") for i in range(3)]))
    ds = TrainDataset(samples.root, odgt, make_opt(), seed=0, skip_bad_samples=True)
    with pytest.raises(RuntimeError, match="10 replacements of a bad sample failed"):
        ds[0]
