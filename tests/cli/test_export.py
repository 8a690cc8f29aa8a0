"""mit-semseg-export: the command line of the ONNX / torch.export export."""

import pytest
import torch

from mit_semseg.cli.export import main
from mit_semseg.models import build_segmentation_model


@pytest.fixture
def onnxruntime():
    return pytest.importorskip("onnxruntime", reason="ONNX tests need pip install "
                               "'mit_semseg[onnx]'")


def _write_checkpoint(tmp_path, encoder, decoder):
    module = build_segmentation_model(encoder, decoder, 4)
    torch.save(module.encoder.state_dict(), tmp_path / "encoder_epoch_1.pth")
    torch.save(module.decoder.state_dict(), tmp_path / "decoder_epoch_1.pth")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"DATASET:\n  num_class: 4\nMODEL:\n  arch_encoder: {encoder}\n"
                   f"  arch_decoder: {decoder}\n  fc_dim: {module.encoder.out_channels[-1]}\n"
                   f"DIR: {tmp_path}\nTEST:\n  checkpoint: epoch_1.pth\n")
    return cfg


@pytest.mark.slow
def test_cli_exports_and_checks(tmp_path, onnxruntime):
    cfg = _write_checkpoint(tmp_path, "mobilenetv2dilated", "c1_deepsup")
    out = tmp_path / "out" / "model.onnx"
    assert main(["--cfg", str(cfg), "--output", str(out)]) == 0
    assert out.is_file() and not list(out.parent.glob(".*"))  # no temporary file left


def test_cli_names_a_missing_checkpoint(tmp_path, capsys):
    cfg = _write_checkpoint(tmp_path, "mobilenetv2dilated", "c1_deepsup")
    (tmp_path / "decoder_epoch_1.pth").unlink()
    assert main(["--cfg", str(cfg), "--format", "torch-export", "--output",
                 str(tmp_path / "m.pt2")]) == 2
    logged = capsys.readouterr()
    assert "decoder_epoch_1.pth" in logged.out + logged.err
    assert not (tmp_path / "m.pt2").exists()
