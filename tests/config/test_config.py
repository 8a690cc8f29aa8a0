"""Config loading: every shipped YAML merges, errors name the key/file, values are validated."""

from pathlib import Path

import pytest
import yaml

from mit_semseg.config import (
    RESUME_MAY_CHANGE,
    CfgNode,
    ConfigError,
    cfg,
    get_cfg_defaults,
    load_config,
    resume_changes,
    validate_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
YAMLS = sorted((REPO_ROOT / "config").glob("*.yaml"))

# Declared by the original's config/*.yaml files (upstream_spec.md §3.2).
ORIGINAL = {
    "ade20k-mobilenetv2dilated-c1_deepsup": ("mobilenetv2dilated", "c1_deepsup", 320, 3, 20),
    "ade20k-resnet18dilated-ppm_deepsup": ("resnet18dilated", "ppm_deepsup", 512, 2, 20),
    "ade20k-resnet50dilated-ppm_deepsup": ("resnet50dilated", "ppm_deepsup", 2048, 2, 20),
    "ade20k-resnet101dilated-ppm_deepsup": ("resnet101dilated", "ppm_deepsup", 2048, 2, 25),
    "ade20k-resnet50-upernet": ("resnet50", "upernet", 2048, 2, 30),
    "ade20k-resnet101-upernet": ("resnet101", "upernet", 2048, 2, 40),
    "ade20k-hrnetv2": ("hrnetv2", "c1", 720, 2, 30),
}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_original_defaults_kept():
    d = get_cfg_defaults()
    assert d.DIR == "ckpt/ade20k-resnet50dilated-ppm_deepsup"
    assert d.DATASET.imgSizes == (300, 375, 450, 525, 600)
    assert isinstance(d.DATASET.imgSizes, tuple)
    assert (d.DATASET.imgMaxSize, d.DATASET.padding_constant) == (1000, 8)
    assert (d.TRAIN.lr_encoder, d.TRAIN.lr_pow, d.TRAIN.beta1) == (0.02, 0.9, 0.9)
    assert (d.TRAIN.weight_decay, d.TRAIN.deep_sup_scale, d.TRAIN.seed) == (1e-4, 0.4, 304)
    assert (d.TRAIN.epoch_iters, d.TRAIN.num_epoch, d.TRAIN.workers) == (5000, 20, 16)
    assert (d.VAL.checkpoint, d.TEST.checkpoint, d.TEST.result) == ("epoch_20.pth",) * 2 + ("./",)


def test_defaults_are_clones():
    a = get_cfg_defaults()
    a.TRAIN.num_epoch = 3
    assert get_cfg_defaults().TRAIN.num_epoch == 20
    assert cfg.TRAIN.num_epoch == 20


@pytest.mark.parametrize("path", YAMLS, ids=[p.stem for p in YAMLS])
def test_every_shipped_yaml_loads_and_round_trips(path, tmp_path):
    loaded = load_config(path)
    assert loaded.is_frozen()
    raw = yaml.safe_load(path.read_text())
    assert loaded.MODEL.arch_encoder == raw["MODEL"]["arch_encoder"]
    # the dump is a complete config that loads back to the same values
    dumped = tmp_path / "dump.yaml"
    dumped.write_text(loaded.dump())
    again = load_config(dumped)
    assert again == loaded
    assert isinstance(again.DATASET.imgSizes, tuple)


@pytest.mark.parametrize("name", sorted(ORIGINAL))
def test_original_configs_match_upstream(name):
    enc, dec, fc_dim, batch, epochs = ORIGINAL[name]
    c = load_config(REPO_ROOT / "config" / f"{name}.yaml")
    assert (c.MODEL.arch_encoder, c.MODEL.arch_decoder, c.MODEL.fc_dim) == (enc, dec, fc_dim)
    assert (c.TRAIN.batch_size_per_gpu, c.TRAIN.num_epoch) == (batch, epochs)
    # The released HRNet folder names the decoder; the original's file name does not.
    assert c.DIR == "ckpt/" + ("ade20k-hrnetv2-c1" if name == "ade20k-hrnetv2" else name)
    assert c.DATASET.num_class == 150


def test_overrides_from_list_parse_literals(tmp_path):
    c = load_config(None, ["TRAIN.num_epoch", "3", "DATASET.imgSizes", "(450,)",
                           "VAL.visualize", "True", "TRAIN.lr_encoder", "1"])
    assert c.TRAIN.num_epoch == 3
    assert c.DATASET.imgSizes == (450,)
    assert c.VAL.visualize is True
    assert c.TRAIN.lr_encoder == 1.0 and isinstance(c.TRAIN.lr_encoder, float)


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = _write(tmp_path, "TRAIN:\n  num_epochs: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "TRAIN.num_epochs" in message and str(path) in message
    assert "TRAIN.num_epoch" in message.replace("TRAIN.num_epochs", "")  # the suggestion


def test_unknown_key_on_command_line():
    with pytest.raises(ConfigError, match=r"command line: unknown config key 'MODEL.arch'"):
        load_config(None, ["MODEL.arch", "x"])
    with pytest.raises(ConfigError, match="unknown config key 'NOPE.x'"):
        load_config(None, ["NOPE.x", "1"])


def test_type_mismatch_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"DATASET.imgSizes expects tuple.*\(300,\)"):
        load_config(None, ["DATASET.imgSizes", "300"])
    path = _write(tmp_path, "TRAIN:\n  num_epoch: 2.5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: config key TRAIN.num_epoch expects int"):
        load_config(path)
    with pytest.raises(ConfigError, match="TRAIN.fix_bn expects bool"):
        load_config(None, ["TRAIN.fix_bn", "1"])
    with pytest.raises(ConfigError, match="TRAIN.factored_heads expects bool"):
        load_config(None, ["TRAIN.factored_heads", "'no'"])


def test_section_given_as_value_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="TRAIN is a section"):
        load_config(_write(tmp_path, "TRAIN: 3\n"))


def test_missing_file_and_odd_overrides(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(None, ["TRAIN.num_epoch"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "TRAIN: [\n"))


@pytest.mark.parametrize(
    "opts, key",
    [
        (["DATASET.num_class", "0"], "DATASET.num_class"),
        (["DATASET.padding_constant", "4"], "DATASET.padding_constant"),
        (["DATASET.imgSizes", "()"], "DATASET.imgSizes"),
        (["DATASET.max_image_pixels", "0"], "DATASET.max_image_pixels"),
        (["TRAIN.amp", "fp8"], "TRAIN.amp"),
        (["VAL.amp", "int8"], "VAL.amp"),
        (["TEST.amp", "bf8"], "TEST.amp"),
        (["DEVICE", "gpu"], "DEVICE"),
        (["DIST.backend", "mpi"], "DIST.backend"),
        (["TRAIN.start_epoch", "20"], "TRAIN.start_epoch"),
        (["TRAIN.optim", "Adam"], "TRAIN.optim"),
        (["TRAIN.epoch_iters", "0"], "TRAIN.epoch_iters"),
        (["TRAIN.max_nonfinite_steps", "-1"], "TRAIN.max_nonfinite_steps"),
        (["TEST.window_size", "-1"], "TEST.window_size"),
        (["VAL.batch_size", "4"], "VAL.batch_size"),
        (["TEST.batch_size", "2"], "TEST.batch_size"),
        (["MODEL.precision", "int4"], "MODEL.precision"),
        (["MODEL.calibration_images", "0"], "MODEL.calibration_images"),
    ],
)
def test_invalid_values_are_rejected(opts, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, opts)


def test_original_batch_size_keys_accept_only_one():
    # read by nothing; config.yaml files dumped by the original's train.py set them to 1
    c = load_config(None, ["VAL.batch_size", "1", "TEST.batch_size", "1"])
    assert (c.VAL.batch_size, c.TEST.batch_size) == (1, 1)
    with pytest.raises(ConfigError, match=r"VAL\.batch_size must be 1 .*got 8"):
        load_config(None, ["VAL.batch_size", "8"])


def test_valid_device_strings():
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert load_config(None, ["DEVICE", device]).DEVICE == device


def test_loaded_config_is_frozen():
    c = load_config()
    with pytest.raises(AttributeError):
        c.TRAIN.num_epoch = 1
    validate_config(c)  # the defaults themselves are valid


def test_every_default_key_has_a_comment():
    """STYLE G7: each key in defaults.py is preceded by a comment line explaining it."""
    source = (REPO_ROOT / "mit_semseg" / "config" / "defaults.py").read_text().splitlines()
    leaves = 0
    for i, line in enumerate(source):
        if line.startswith("_C.") and "= CN()" not in line:
            leaves += 1
            assert source[i - 1].lstrip().startswith("#"), f"no comment above: {line}"
    assert leaves == len(_leaf_keys(get_cfg_defaults()))


def _leaf_keys(node: CfgNode) -> list:
    out = []
    for value in node.values():
        out.extend(_leaf_keys(value) if isinstance(value, CfgNode) else [value])
    return out


@pytest.mark.parametrize("path", YAMLS, ids=[p.stem for p in YAMLS])
def test_every_shipped_yaml_names_registered_architectures(path):
    from mit_semseg.models import list_decoders, list_encoders

    c = load_config(path)
    assert c.MODEL.arch_encoder in list_encoders()
    assert c.MODEL.arch_decoder in list_decoders()


def test_resume_changes_name_the_keys_that_change_what_is_trained():
    saved = load_config(None, ["DATASET.imgSizes", "(300, 400)"]).dump()
    current = load_config(None, [
        "DATASET.imgSizes", "(300, 450)", "TRAIN.lr_decoder", "0.01", "MODEL.fc_dim", "512",
        # may differ: paths, loader processes, logging, saving, evaluation
        "DIR", "elsewhere", "DATASET.root_dataset", "/mnt/data", "TRAIN.workers", "2",
        "TRAIN.disp_iter", "5", "TRAIN.checkpoint_every", "7", "TRAIN.checkpoint_minutes", "1",
        "VAL.checkpoint", "epoch_3.pth", "TEST.result", "out", "DIST.backend", "gloo",
        # the same training computed in another order
        "TRAIN.factored_heads", "False"])
    assert resume_changes(saved, current) == [
        ("DATASET.imgSizes", (300, 400), (300, 450)),  # YAML's list read back as a tuple
        ("MODEL.fc_dim", 2048, 512),
        ("TRAIN.lr_decoder", 0.02, 0.01),
    ]
    assert resume_changes(saved, load_config(None, ["DATASET.imgSizes", "(300, 400)"])) == []


def test_resume_changes_skip_keys_one_config_lacks():
    old = get_cfg_defaults()
    old.defrost()
    del old.TRAIN["checkpoint_every"]  # a checkpoint written before the key existed
    old.TRAIN.lr_encoder = 0.5
    changes = resume_changes(old.dump(), load_config(None, ["TRAIN.checkpoint_every", "1"]))
    assert changes == [("TRAIN.lr_encoder", 0.5, 0.02)]
    with pytest.raises(ConfigError, match="config stored in the checkpoint cannot be read"):
        resume_changes("- just\n- a list\n", load_config(None))


def test_keys_that_may_change_on_resume_exist():
    keys = set(_keys_of(get_cfg_defaults()))
    for name in RESUME_MAY_CHANGE:
        assert name in keys or any(k.startswith(name + ".") for k in keys), name


def _keys_of(node, prefix=""):
    for name, value in node.items():
        if isinstance(value, CfgNode):
            yield from _keys_of(value, f"{prefix}{name}.")
        else:
            yield prefix + name


def test_the_default_pixel_limit_is_the_readers_and_pillows():
    from PIL import Image

    from mit_semseg.data.image_io import MAX_IMAGE_PIXELS

    # the config's default is what library callers of the readers get, and Pillow's own
    assert get_cfg_defaults().DATASET.max_image_pixels == MAX_IMAGE_PIXELS
    assert MAX_IMAGE_PIXELS == 1024**3 // 4 // 3 == Image.MAX_IMAGE_PIXELS
