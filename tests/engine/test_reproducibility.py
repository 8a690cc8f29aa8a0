"""mit_semseg.engine.reproducibility: what TRAIN.deterministic switches."""

import os

import pytest
import torch

from mit_semseg.engine.reproducibility import CUBLAS_WORKSPACE_CONFIG, configure_determinism


@pytest.fixture
def torch_flags(monkeypatch):
    """Put torch's global flags back as they were after the test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    names = ("deterministic", "benchmark", "allow_tf32")
    cudnn = {n: getattr(torch.backends.cudnn, n) for n in names}
    matmul = torch.backends.cuda.matmul.allow_tf32
    algorithms = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(algorithms)
    for name, value in cudnn.items():
        setattr(torch.backends.cudnn, name, value)
    torch.backends.cuda.matmul.allow_tf32 = matmul


def test_deterministic_mode_sets_every_switch(torch_flags):
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    configure_determinism(True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE_CONFIG == ":4096:8"


def test_a_reproducible_workspace_setting_is_kept_and_off_changes_nothing(torch_flags,
                                                                          monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    configure_determinism(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.allow_tf32 = True
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    configure_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.allow_tf32 and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
