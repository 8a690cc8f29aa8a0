"""mit_semseg.cli.devices: the original's GPU list syntax and device resolution."""

import pytest
import torch

from mit_semseg.cli.devices import NotSupportedCliException, parse_devices, resolve_devices


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0-3", [0, 1, 2, 3]),  # examples from upstream_spec.md §4.1
        ("0,2,gpu5,6-7", [0, 2, 5, 6, 7]),
        ("3-0", [0, 1, 2, 3]),
        ("gpu1-gpu2", [1, 2]),
        ("gpu1-3", [1, 2, 3]),
        (" GPU4 , 4,1", [4, 1]),
    ],
)
def test_parse_devices_original_syntax(text, expected):
    assert parse_devices(text) == [f"gpu{i}" for i in expected]


@pytest.mark.parametrize("text", ["cpu", "x", "0-", "gpu", "1.5", ""])
def test_parse_devices_rejects_garbage(text):
    with pytest.raises(NotSupportedCliException, match="Can not recognize device"):
        parse_devices(text)


def test_resolve_devices():
    cpu = torch.device("cpu")
    assert resolve_devices("cpu", cuda_count=4) == [cpu]
    assert resolve_devices("cpux3", cuda_count=0) == [cpu] * 3
    assert resolve_devices("auto", cuda_count=0) == [cpu]
    assert resolve_devices("auto", cuda_count=2) == [torch.device("cuda", 0)]
    assert resolve_devices("cuda:1", cuda_count=2) == [torch.device("cuda", 1)]
    assert resolve_devices("0,gpu1", cuda_count=2) == [torch.device("cuda", i) for i in (0, 1)]
    with pytest.raises(NotSupportedCliException, match=r"GPU\(s\) \[2, 3\].*2 CUDA device"):
        resolve_devices("0-3", cuda_count=2)
    with pytest.raises(NotSupportedCliException, match="CPU replicas"):
        resolve_devices("cpux0", cuda_count=0)
    with pytest.raises(NotSupportedCliException, match='"gpux"'):
        resolve_devices("gpux", cuda_count=0)
