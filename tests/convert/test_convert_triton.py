"""A small converted net (timm's layers and blocks) on the triton backend: under
TRITON_INTERPRET=1 the interpreter is slow, so one net at 16x16."""
import pytest
import torch
from torch import nn

import fastdw
from fastdw import backend
from fastdw.nn.convert_fused import FusedChain
from convert_cases import small_timm_net

if "triton" not in backend.usable("cpu"):
    pytest.skip("needs the triton backend (triton installed, a CUDA device or "
                "TRITON_INTERPRET=1)", allow_module_level=True)


def test_converted_timm_net_on_triton(randomize_bn, accurate, timm_parts):
    model = small_timm_net(timm_parts, nn.ReLU, nn.Hardswish, 16, exp_ratio=2,
                           act_layer=nn.ReLU6, drop_path_rate=0.1)
    model = randomize_bn(model).eval()
    new = fastdw.convert(model)
    assert all(isinstance(m, FusedChain) for m in new)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad(), backend.use_backend("triton"):
        out = new(x)
    assert accurate(out, model, x)
