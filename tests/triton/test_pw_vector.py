"""The 1x1 kernel's vector widths (VEC_K, VEC_N) and its per-image path for NCHW (PER_IMAGE):
fastdw/kernels/triton/pwconv_bn_act.py.

Channel counts that are not multiples of 16 (every V3 width, V2's 24) gave scalar loads and
stores: Triton only knows an int argument is a multiple of 16 or not. The launcher now passes the
channel counts and strides divided by the largest power of two dividing them, and the kernel
multiplies them back by the constexpr. Two checks:
  * under the interpreter with the GPU tiles, against the float64 oracle: the division must be
    exact (a width that does not divide a stride reads the wrong pixels), so layouts whose
    strides allow less than the channel count (a channel slice, NCHW) take a narrower width;
  * compiled for sm_80 without a GPU (its own process: this one interprets the kernels): on
    channels_last tensors of 24 and 40 channels every global load of the kernel is a vector.
NCHW tensors whose pixel rows are contiguous run on a grid of (image, pixel block) programs
(PER_IMAGE), whose pixels the compiler sees contiguous: checked against the oracle with the GPU
tiles (partial pixel blocks, several images, layouts that must not take it), and compiled: on a
28x28 map every global load is a vector there too.
"""
import importlib
import math
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


def on_gpu_tiles(test):
    """A test of the launcher with the GPU tiles under the interpreter, in fp32 and fp16, whose
    outputs start as NaN."""
    marks = [pytest.mark.usefixtures("poisoned"),
             pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason=(
                 "runs the GPU tiles on CPU tensors under TRITON_INTERPRET=1")),
             pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])]
    for mark in marks:
        test = mark(test)
    return test


def pw_call(layout, res_layout, has_gate, n, c_in, c_out, h, w, dtype):
    """Random (x, weight, scale, shift, residual or None, gate or None) of a 1x1 call."""
    x = feature_map(layout, n, c_in, h, w, dtype)
    residual = None if res_layout is None else feature_map(res_layout, n, c_out, h, w, dtype)
    gate = torch.rand(n, c_in) + 0.5 if has_gate else None
    return (x, op_oracle.conv_weight((c_out, c_in), dtype), *op_oracle.random_affine(c_out),
            residual, gate)


def run_and_check(call, act, dtype):
    """The launcher with the GPU tiles on `call` (pw_call), against the float64 oracle."""
    x, weight, scale, shift, residual, gate = call
    out = pw.forward(x, weight, scale, shift, act, residual, gate=gate, gpu_tiles=True)
    gated = x.double() * gate.double()[:, :, None, None] if gate is not None else x
    assert_close(out, op_oracle.pwconv_bn_act(gated, weight, scale, shift, act, residual), dtype)


# (C_in, C_out, x's layout, the residual's layout or None, gate, VEC_K, VEC_N). y is
# channels_last when x is channels_last-contiguous, else NCHW (output_memory_format).
CASES = [
    (24, 40, "channels_last", "channels_last", False, 8, 8),
    (40, 24, "channels_last", "nchw", True, 8, 1),  # an NCHW residual: y's side scalar
    (24, 24, "slice", None, False, 4, 1),           # x's strides of 36: 4 divides them, 8 not
    (40, 24, "nchw", None, False, 8, 8),            # per image: the weights' rows (C_IN)
    (48, 64, "channels_last", "channels_last", False, 1, 1),  # multiples of 16: Triton's own
]


@on_gpu_tiles
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_vector_widths_and_results(case, dtype, monkeypatch):
    c_in, c_out, layout, res_layout, has_gate, vec_k, vec_n = case
    call = pw_call(layout, res_layout, has_gate, 2, c_in, c_out, 5, 7, dtype)
    widths = []
    vectorised = pw.vectorised

    def recording(args, **options):
        ints, vecs = vectorised(args, **options)
        widths.append({k: v for k, v in vecs.items() if k.startswith("VEC")})
        return ints, vecs

    monkeypatch.setattr(pw, "vectorised", recording)
    run_and_check(call, "hardswish", dtype)
    assert widths == [{"VEC_K": vec_k, "VEC_N": vec_n}]


def test_vectorised_divides_exactly():
    args = dict(C_IN=24, C_OUT=40, sxn=24 * 35, sxh=24 * 7, sxw=24, sxc=1, srn=40 * 35,
                srh=40 * 7, srw=40, src=1, syn=40 * 36, syh=40 * 6, syw=40, syc=1, M=70, HW=35,
                W=7)
    ints, vecs = pw.vectorised(args)
    assert vecs == {"VEC_K": 8, "VEC_N": 8, "PER_IMAGE": False}
    assert ints == dict(args, C_IN=3, C_OUT=5, sxn=105, sxh=21, sxw=3, srn=175, srh=35, srw=5,
                        syn=180, syh=30, syw=5)
    ints, vecs = pw.vectorised(dict(args, srw=20))  # one stride of 20: VEC_N 4
    assert vecs == {"VEC_K": 8, "VEC_N": 4, "PER_IMAGE": False}
    assert ints["C_OUT"] == 10 and ints["srw"] == 5


class Recorder:
    """Stands in for pw_kernel: records (grid, M, PER_IMAGE) of each launch, then runs it."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, args[7], kwargs["PER_IMAGE"]))
            return self.kernel[grid](*args, **kwargs)
        return launch


# (x's layout, the residual's layout or None, gate, N, H, W, PER_IMAGE): H*W of 45 (one partial
# block of 64 pixels per image) and 99 (two, the second partial).
PER_IMAGE_CASES = [
    ("nchw", "nchw", True, 3, 5, 9, True),
    ("nchw", None, False, 2, 9, 11, True),
    ("nchw", "channels_last", False, 2, 9, 11, False),  # the residual's pixels are not in rows
    ("strided", None, False, 2, 5, 9, False),            # every other column
    ("channels_last", "nchw", False, 2, 5, 9, False),    # channels contiguous: flat, vectors
]


@on_gpu_tiles
@pytest.mark.parametrize("case", PER_IMAGE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[4]}x{c[5]}")
def test_per_image_grid(case, dtype, monkeypatch):
    layout, res_layout, has_gate, n, h, w, per_image = case
    c_in, c_out = 40, 24
    call = pw_call(layout, res_layout, has_gate, n, c_in, c_out, h, w, dtype)
    recorder = Recorder(pw.pw_kernel)
    monkeypatch.setattr(pw, "pw_kernel", recorder)
    run_and_check(call, "relu6", dtype)
    block_m, block_n = pw.GPU_CONFIGS["small_n"][:2]
    pixels = h * w if per_image else n * h * w
    blocks = n * math.ceil(h * w / block_m) if per_image else math.ceil(n * h * w / block_m)
    assert recorder.launches == [((blocks, math.ceil(c_out / block_n)), pixels, per_image)]


@pytest.mark.usefixtures("poisoned")
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the interpreter's own tiles exist under TRITON_INTERPRET=1 only")
def test_interpreter_tiles_stay_flat(monkeypatch):
    """Without the GPU's tiles the interpreter runs few, large programs: flat pixel blocks over
    all images, NCHW or not."""
    x = feature_map("nchw", 3, 16, 5, 9, torch.float32)
    weight = op_oracle.conv_weight((8, 16), torch.float32)
    scale, shift = op_oracle.random_affine(8)
    recorder = Recorder(pw.pw_kernel)
    monkeypatch.setattr(pw, "pw_kernel", recorder)
    out = pw.forward(x, weight, scale, shift, "relu", None)
    assert_close(out, op_oracle.pwconv_bn_act(x, weight, scale, shift, "relu", None),
                 torch.float32)
    assert [launch[1:] for launch in recorder.launches] == [(3 * 5 * 9, False)]


# Compiles pw_kernel for sm_80 as a launch on channels_last tensors of C channels specialises it
# (resources.compile_one) and prints "<vector loads>/<loads>" of its PTX.
COMPILE = """
import importlib, sys, torch
from fastdw.kernels.triton import resources
pw = importlib.import_module("fastdw.kernels.triton.pwconv_bn_act")
CHANNELS_LAST, NCHW = (lambda c: (784 * c, 1, 28 * c, c)), (lambda c: (784 * c, 784, 28, 1))
for c, dtype, label, layout in [(24, torch.float16, "small_n", CHANNELS_LAST),
                                (40, torch.float32, "mid_n", CHANNELS_LAST),
                                (64, torch.float16, "mid_n", NCHW)]:
    strides = {f"s{t}{d}": v for t in "xry" for d, v in zip("nchw", layout(c))}
    args, vecs = pw.vectorised(dict(
        x_ptr=dtype, w_ptr=dtype, scale_ptr=torch.float32, shift_ptr=torch.float32,
        gate_ptr=torch.float32, res_ptr=dtype, y_ptr=dtype, M=1568, HW=784, W=28, C_IN=c,
        C_OUT=c, **strides))
    bm, bn, bk, warps = pw.GPU_CONFIGS[label]
    row = resources.compile_one((pw.pw_kernel, label, args, dict(
        ACT="hardswish", HAS_GATE=True, HAS_RES=True, DOT_FP32=False, PRECISION="ieee",
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, INT64=False, **vecs),
        dict(num_warps=warps, maxnreg=255)), 80)
    print(c, vecs["VEC_K"], vecs["VEC_N"], vecs["PER_IMAGE"], row["loads"], row["problems"] or "-")
"""


def test_loads_are_vectors_compiled_for_sm_80():
    pytest.importorskip("triton.backends.nvidia", reason="needs triton's NVIDIA backend (ptxas)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [line.split() for line in done.stdout.splitlines()]
    assert [row[:4] for row in rows] == [["24", "8", "8", "False"], ["40", "8", "8", "False"],
                                         ["64", "1", "1", "True"]]
    # before, flat and without widths: 0/48, 0/24 and (NCHW) 4/28
    for c, _, _, _, loads, problems in rows:
        vector, total = map(int, loads.split("/"))
        assert total > 0 and vector == total, (c, loads)
        assert problems == "-", (c, problems)
