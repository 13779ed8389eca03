"""The 1x1 kernel's vector widths (VEC_K, VEC_N: fastdw/kernels/triton/pwconv_bn_act.py).

Channel counts that are not multiples of 16 (every V3 width, V2's 24) gave scalar loads and
stores: Triton only knows an int argument is a multiple of 16 or not. The launcher now passes the
channel counts and strides divided by the largest power of two dividing them, and the kernel
multiplies them back by the constexpr. Two checks:
  * under the interpreter with the GPU tiles, against the float64 oracle: the division must be
    exact (a width that does not divide a stride reads the wrong pixels), so layouts whose
    strides allow less than the channel count (a channel slice, NCHW) take a narrower width;
  * compiled for sm_80 without a GPU (its own process: this one interprets the kernels): on
    channels_last tensors of 24 and 40 channels every global load of the kernel is a vector.
"""
import importlib
import os
import subprocess
import sys

import pytest
import torch

from numerics import assert_close

pytest.importorskip("fastdw.kernels.triton", reason="needs triton installed")
import op_oracle  # noqa: E402  (the op tests' float64 oracle; conftest.py puts it on sys.path)

# By module path: the package attribute of this name is the kernel function.
pw = importlib.import_module("fastdw.kernels.triton.pwconv_bn_act")


def channel_slice(n, c, h, w, dtype):
    """A channels_last (n, c, h, w) view of channels 4..c+4 of a (n, c + 12, h, w) tensor: the
    strides are multiples of c + 12, not of c."""
    whole = op_oracle.feature_map((n, c + 12, h, w), dtype, "channels_last")
    return whole[:, 4:c + 4]


def feature_map(layout, n, c, h, w, dtype):
    if layout == "slice":
        return channel_slice(n, c, h, w, dtype)
    return op_oracle.feature_map((n, c, h, w), dtype, layout)


# (C_in, C_out, x's layout, the residual's layout or None, gate, VEC_K, VEC_N). y is
# channels_last when x is channels_last-contiguous, else NCHW (output_memory_format).
CASES = [
    (24, 40, "channels_last", "channels_last", False, 8, 8),
    (40, 24, "channels_last", "nchw", True, 8, 1),  # an NCHW residual: y's side scalar
    (24, 24, "slice", None, False, 4, 1),           # x's strides of 36: 4 divides them, 8 not
    (40, 24, "nchw", None, False, 1, 1),            # channels are not contiguous
    (48, 64, "channels_last", "channels_last", False, 1, 1),  # multiples of 16: Triton's own
]


@pytest.mark.usefixtures("poisoned")
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="runs the GPU tiles on CPU tensors under TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_vector_widths_and_results(case, dtype, monkeypatch):
    c_in, c_out, layout, res_layout, has_gate, vec_k, vec_n = case
    n, h, w = 2, 5, 7
    x = feature_map(layout, n, c_in, h, w, dtype)
    weight = op_oracle.conv_weight((c_out, c_in), dtype)
    scale, shift = op_oracle.random_affine(c_out)
    residual = None if res_layout is None else feature_map(res_layout, n, c_out, h, w, dtype)
    gate = torch.rand(n, c_in) + 0.5 if has_gate else None
    widths = []
    vectorised = pw.vectorised

    def recording(args):
        ints, vecs = vectorised(args)
        widths.append(vecs)
        return ints, vecs

    monkeypatch.setattr(pw, "vectorised", recording)
    out = pw.forward(x, weight, scale, shift, "hardswish", residual, gate=gate, gpu_tiles=True)
    gated = x.double() * gate.double()[:, :, None, None] if has_gate else x
    assert_close(out, op_oracle.pwconv_bn_act(gated, weight, scale, shift, "hardswish",
                                              residual), dtype)
    assert widths == [{"VEC_K": vec_k, "VEC_N": vec_n}]


def test_vectorised_divides_exactly():
    args = dict(C_IN=24, C_OUT=40, sxn=24 * 35, sxh=24 * 7, sxw=24, sxc=1, srn=40 * 35,
                srh=40 * 7, srw=40, src=1, syn=40 * 36, syh=40 * 6, syw=40, syc=1, M=70)
    ints, vecs = pw.vectorised(args)
    assert vecs == {"VEC_K": 8, "VEC_N": 8}
    assert ints == dict(args, C_IN=3, C_OUT=5, sxn=105, sxh=21, sxw=3, srn=175, srh=35, srw=5,
                        syn=180, syh=30, syw=5)
    ints, vecs = pw.vectorised(dict(args, srw=20))  # one stride of 20: VEC_N 4
    assert vecs == {"VEC_K": 8, "VEC_N": 4} and ints["C_OUT"] == 10 and ints["srw"] == 5


# Compiles pw_kernel for sm_80 as a launch on channels_last tensors of C channels specialises it
# (resources.compile_one) and prints "<vector loads>/<loads>" of its PTX.
COMPILE = """
import importlib, sys, torch
from fastdw.kernels.triton import resources
pw = importlib.import_module("fastdw.kernels.triton.pwconv_bn_act")
for c, dtype, label in [(24, torch.float16, "small_n"), (40, torch.float32, "mid_n")]:
    strides = {f"s{t}{d}": v for t in "xry" for d, v in zip("nchw", (784 * c, 1, 28 * c, c))}
    args, vecs = pw.vectorised(dict(
        x_ptr=dtype, w_ptr=dtype, scale_ptr=torch.float32, shift_ptr=torch.float32,
        gate_ptr=torch.float32, res_ptr=dtype, y_ptr=dtype, M=1568, HW=784, W=28, C_IN=c,
        C_OUT=c, **strides))
    bm, bn, bk, warps = pw.GPU_CONFIGS[label]
    row = resources.compile_one((pw.pw_kernel, label, args, dict(
        ACT="hardswish", HAS_GATE=True, HAS_RES=True, DOT_FP32=False, PRECISION="ieee",
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, INT64=False, **vecs),
        dict(num_warps=warps, maxnreg=255)), 80)
    print(c, vecs["VEC_K"], vecs["VEC_N"], row["loads"], row["problems"] or "-")
"""


def test_channels_last_loads_are_vectors_when_c_is_not_a_multiple_of_16():
    pytest.importorskip("triton.backends.nvidia", reason="needs triton's NVIDIA backend (ptxas)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [line.split() for line in done.stdout.splitlines()]
    assert [row[:3] for row in rows] == [["24", "8", "8"], ["40", "8", "8"]]
    for c, _, _, loads, problems in rows:
        vector, total = map(int, loads.split("/"))
        assert total > 0 and vector == total, (c, loads)  # scalar before: 0/48 and 0/24
        assert problems == "-", (c, problems)
