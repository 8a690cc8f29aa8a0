"""The resampling matrices equal the torch operations they replace (in float64)."""

import pytest
import torch
import torch.nn.functional as F

from mit_semseg.nn.resample import MatrixAdaptiveAvgPool2d, bilinear_matrix


@pytest.mark.parametrize("size,out", [(13, 6), (7, 3), (5, 6), (1, 1), (9, 9)])
def test_adaptive_pool_matrix_equals_adaptive_avg_pool(size, out):
    x = torch.randn(2, 3, size, size + 4, dtype=torch.float64)
    expected = F.adaptive_avg_pool2d(x, (out, out + 1))
    torch.testing.assert_close(MatrixAdaptiveAvgPool2d((out, out + 1))(x), expected)


def test_adaptive_pool_matrix_reads_channels_last_maps_like_contiguous_ones():
    # a compiled graph hands it channels-last maps; the products then read channels as columns
    x = torch.randn(2, 5, 11, 8, dtype=torch.float64)
    pool = MatrixAdaptiveAvgPool2d((3, 2))
    got = pool(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, F.adaptive_avg_pool2d(x, (3, 2)))


@pytest.mark.parametrize("size,out", [(6, 75), (3, 10), (1, 9), (7, 3), (10, 10)])
def test_bilinear_matrix_equals_interpolate(size, out):
    x = torch.randn(2, size, dtype=torch.float64)
    expected = F.interpolate(x[None, :, :, None], size=(out, 1), mode="bilinear",
                             align_corners=False)[0, :, :, 0]
    got = x @ bilinear_matrix(size, out, x).T
    torch.testing.assert_close(got, expected)
