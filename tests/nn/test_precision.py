"""mit_semseg.nn.precision: mode checks naming the key, autocast, gradient scaler."""

import pytest
import torch
from torch import nn

from mit_semseg.nn.precision import autocast, check_amp, grad_scaler


def test_amp_autocast():
    cpu = torch.device("cpu")
    with autocast(cpu, "bf16"):
        out = nn.Linear(4, 2)(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16
    with autocast(cpu, ""):
        assert nn.Linear(4, 2)(torch.randn(3, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        autocast(cpu, "fp16")
    assert not grad_scaler(cpu, "fp16").is_enabled()


@pytest.mark.parametrize("key", ["TRAIN.amp", "VAL.amp", "TEST.amp"])
def test_check_amp_names_the_key_it_checks(key):
    cpu = torch.device("cpu")
    check_amp("bf16", cpu, key)
    check_amp("", cpu, key)
    with pytest.raises(ValueError) as info:
        check_amp("fp16", cpu, key)
    assert str(info.value) == f"{key} 'fp16' needs a CUDA device; use {key} bf16 on the CPU"
    with pytest.raises(ValueError, match=rf"^{key} must be one of .*'int8'"):
        check_amp("int8", cpu, key)
