"""Feature maps past 2**31 elements: the kernels index with int64_t, so the last rows of a
4.3 GB input must come out exactly as the reference computes them from a crop.

Needs ~6 GB of RAM and ~1 min: runs when FASTDW_BIG_TESTS=1, skipped otherwise."""
import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("fastdw._C", reason="fastdw._C is not built")
pytestmark = pytest.mark.skipif(os.environ.get("FASTDW_BIG_TESTS") != "1",
                                reason="needs ~6 GB; set FASTDW_BIG_TESTS=1 to run")


def test_dwconv_input_beyond_int32_indices():
    c, h, w = 16, 16384, 8200                      # 2.15e9 elements > 2**31, bfloat16
    assert c * h * w > 2**31
    x = torch.zeros(1, h, w, c, dtype=torch.bfloat16).permute(0, 3, 1, 2)  # channels_last
    tail = 5                                       # the last input rows, beyond 2**31 elements
    x[:, :, -tail:, :] = torch.randn(1, c, tail, w).to(torch.bfloat16)
    weight = torch.randn(c, 1, 3, 3).to(torch.bfloat16)
    scale, shift = torch.rand(c) + 0.5, torch.randn(c)
    y = torch.ops.fastdw_cpp.dwconv_bn_act(x, weight, scale, shift, 2, 1, 1, "relu6")
    oh = y.shape[2]
    # Output rows oh-2, oh-1 read input rows from 2*(oh-2)-1 on; rebuild their zero padding
    # (left, right, bottom) around that crop and convolve it in float64 without padding.
    r0 = 2 * (oh - 2) - 1
    assert h - r0 <= tail
    crop = F.pad(x[:, :, r0:, :].double(), (1, 1, 0, 1))
    ref = F.conv2d(crop, weight.double(), None, 2, 0, 1, c)[:, :, :2]
    ref = (ref * scale.double()[:, None, None] + shift.double()[:, None, None]).clamp(0, 6)
    out = y[:, :, oh - 2:].double()
    assert out.shape == ref.shape
    assert ((out - ref).norm() / ref.norm()).item() < 1e-2
