"""Every tile configuration a GPU launches, run numerically under Triton's interpreter.

Under TRITON_INTERPRET=1 the launchers pick large interpreter tiles (few programs, each ~35 ms
or more), so the configurations a GPU executes would otherwise only be compiled
(tests/triton/test_resources.py). Here each launcher is asked for the GPU's tiles
(gpu_tiles=True), on inputs small enough to run in seconds yet with several spatial tiles per
image, the last tile row and column partial (the first ones read the zero padding), a partial
last channel block, and in some cases a second image, against the float64 stock-PyTorch oracle
(tests/ops/op_oracle.py) within the tolerance table (tests/numerics.py). Each test also records
what the interpreter launched and checks it is the expected GPU configuration.

fp32 and fp16 only: bf16 tl.dot is wrong in Triton 3.8's interpreter, so its bf16 runs multiply
as fp32, which is not the GPU path (its bf16 variants are compiled in test_resources.py).
"""
import importlib
import math
import os
from typing import NamedTuple

import pytest
import torch

from numerics import assert_close

kernels = pytest.importorskip("fastdw.kernels.triton", reason="needs triton installed")

import op_oracle  # noqa: E402  (the op tests' float64 oracle; conftest.py puts it on sys.path)
from ir_blocks import block_weights  # noqa: E402

# By module path: the package attributes of these names are the kernel functions.
dw, pw, ir = (importlib.import_module(f"fastdw.kernels.triton.{name}") for name in
              ("dwconv_bn_act", "pwconv_bn_act", "inverted_residual"))

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("runs the GPU configurations under TRITON_INTERPRET=1; on a GPU every triton "
                "test runs them", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("poisoned")  # outputs and scratch start as NaN


class Launch(NamedTuple):
    kernel: str
    grid: tuple
    meta: dict  # BLOCK_*, VEC*, PROJECT, PERSISTENT, PRECISION, num_warps and maxnreg


@pytest.fixture
def launches(monkeypatch):
    """Every kernel launch the interpreter runs, in order, as a Launch (not the warmups, which
    launch nothing)."""
    from triton.runtime.interpreter import InterpretedFunction
    seen = []
    run = InterpretedFunction.run

    def recording(self, *args, grid, warmup, **kwargs):
        meta = {k: v for k, v in kwargs.items()
                if k.startswith("BLOCK_") or k.startswith("VEC")
                or k in ("PROJECT", "PERSISTENT", "PRECISION", "num_warps", "maxnreg")}
        if not warmup:
            seen.append(Launch(self.__name__, tuple(grid), meta))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", recording)
    return seen


def dw_config(launch):
    m = launch.meta
    return m["BLOCK_OH"], m["BLOCK_OW"], m["BLOCK_C"], m["num_warps"]


def tiles(size, block):
    """(tiles along a dimension, whether the last one is partial)."""
    return math.ceil(size / block), size % block != 0


def assert_tiled(launch, images, out_h, out_w, channels):
    """A dw-style launch has several spatial tiles per image, the last row and column of them
    partial, and one program per tile, image and channel block."""
    block_oh, block_ow, block_c, _ = dw_config(launch)
    (rows, partial_h), (cols, partial_w) = tiles(out_h, block_oh), tiles(out_w, block_ow)
    assert rows >= 2 and cols >= 2 and partial_h and partial_w, (out_h, out_w, block_oh, block_ow)
    assert launch.grid == (images * rows * cols, math.ceil(channels / block_c))


def dw_inputs(n, c, h, w, k, dtype, layout):
    x = op_oracle.feature_map((n, c, h, w), dtype, layout)
    return (x, op_oracle.conv_weight((c, 1, k, k), dtype), *op_oracle.random_affine(c))


# (config, dtype, N, C, H, W, k, stride, padding, dilation, act, layout). pick_config gives
# C <= 16 the narrow config, wider fp32 wide4 and wider fp16 wide2. C is never a multiple of the
# channel block (40 takes two blocks of 32); the output map and, for the grad-input kernel, the
# input map have >= 2 tiles each way, the last one partial. One image where two add nothing but
# interpreter time (a program costs ~0.15-0.4 s here).
DW_CASES = [
    ("narrow", torch.float32, 2, 12, 10, 20, 3, 1, 1, 1, "relu6", "channels_last"),
    ("narrow", torch.float16, 1, 13, 10, 18, 5, 1, 2, 1, "hardswish", "nchw"),
    ("wide4", torch.float32, 1, 40, 17, 18, 3, 2, 1, 1, "silu", "strided"),
    ("wide2", torch.float16, 2, 40, 10, 10, 3, 1, 2, 2, "hardsigmoid", "channels_last"),
]


def dw_case_id(case):
    label, dtype, n, c, h, w, k, stride, padding, dilation, act, layout = case
    return f"{label}-{str(dtype)[6:]}-n{n}-c{c}-k{k}-s{stride}-d{dilation}-{act}-{layout}"


@pytest.mark.parametrize("case", DW_CASES, ids=dw_case_id)
def test_dwconv_gpu_configs_forward_and_backward(case, launches):
    run_dw_case(case, launches, dw.GPU_CONFIGS[case[0]])


# Small maps (the last stages' 7x7 and 14x14) on a GPU of 132 SMs, where the 8x8 tiles give
# fewer programs than SMs: every depthwise kernel takes its config's "_small" twin (4x4 tiles);
# 2 x 2 output tiles (3 x 3 input tiles at stride 2), partial ones.
SMALL_MAP_CASES = [
    ("narrow", torch.float32, 1, 12, 7, 7, 3, 1, 1, 1, "relu6", "channels_last"),
    ("narrow", torch.float16, 1, 13, 6, 7, 5, 1, 2, 1, "hardswish", "nchw"),
    ("wide4", torch.float32, 1, 40, 10, 10, 3, 2, 1, 1, "hardswish", "nchw"),
    ("wide2", torch.float16, 2, 40, 7, 7, 3, 1, 1, 1, "silu", "channels_last"),
]


@pytest.mark.parametrize("case", SMALL_MAP_CASES, ids=dw_case_id)
def test_dwconv_small_map_tiles_forward_and_backward(case, launches, monkeypatch):
    monkeypatch.setattr(dw, "multiprocessors", lambda device: 132)
    run_dw_case(case, launches, dw.GPU_CONFIGS[case[0] + "_small"])


def test_dwconv_small_map_rule():
    """The small-map tile where the GPU tiles give fewer programs than SMs, else the GPU tile;
    off a GPU (no SM count) always the GPU tile."""
    wide2, small = dw.GPU_CONFIGS["wide2"], dw.GPU_CONFIGS["wide2_small"]
    assert dw.pick_config(960, 2, 7, 7, True, 1, 132) == small  # 15 programs
    assert dw.pick_config(960, 2, 7, 7, True, 9, 132) == wide2  # 135
    assert dw.pick_config(64, 2, 56, 56, True, 1, 49) == wide2  # 49
    assert dw.pick_config(64, 2, 56, 56, True, 1, 50) == small
    assert dw.pick_config(12, 4, 7, 7, True, 1, 132) == dw.GPU_CONFIGS["narrow_small"]
    assert dw.pick_config(960, 2, 7, 7, True, 1, None) == wide2


def run_dw_case(case, launches, config):
    """The three depthwise kernels on the case with the GPU's tiles against the float64 oracle:
    each launched with `config`, every map in several tiles, the last partial."""
    label, dtype, n, c, h, w, k, stride, padding, dilation, act, layout = case
    x, weight, scale, shift = dw_inputs(n, c, h, w, k, dtype, layout)
    conv = (stride, padding, dilation, act)
    out = dw.forward(x, weight, scale, shift, *conv, gpu_tiles=True)
    leaves = [t.double().requires_grad_() for t in (x, weight, scale, shift)]
    ref = op_oracle.dwconv_bn_act(*leaves, *conv)
    assert_close(out, ref, dtype)
    grad = torch.randn(out.shape).to(dtype)
    grads = dw.backward(grad, x, weight, scale, shift, *conv, gpu_tiles=True)
    refs = torch.autograd.grad(ref, leaves, grad.double())
    for name, g, r in zip(("x", "weight", "scale", "shift"), grads, refs):
        assert g.shape == r.shape, name
        assert_close(g, r, dtype)

    assert [launch.kernel for launch in launches] == [
        "dw_forward_kernel", "dw_backward_params_kernel", "dw_backward_input_kernel"]
    assert all(dw_config(launch) == config for launch in launches)
    oh, ow = out.shape[2:]
    assert_tiled(launches[0], n, oh, ow, c)
    assert_tiled(launches[1], n, oh, ow, c)
    assert_tiled(launches[2], n, h, w, c)  # grad-input tiles cover the input map
    # Channels_last: the forward's VEC is the largest power of two (up to 16) dividing C, which
    # divides every row and column stride (of grad_x too); with the NCHW gradient, and other
    # layouts, 1.
    vec = min(16, c & -c) if layout == "channels_last" else 1
    assert [launch.meta["VEC"] for launch in launches] == [vec, 1, vec]


# (config, C_in, C_out, N, H, W, layout, residual, act). pick_config gives C_out <= 32 small_n,
# <= 64 mid_n, wider wide_n. M = N*H*W is never a multiple of BLOCK_M (64), nor C_in of BLOCK_K
# (32) nor C_out of BLOCK_N, and pixel blocks straddle images (H*W < 64 or not a multiple).
PW_CASES = [
    ("small_n", 40, 24, 3, 5, 9, "channels_last", True, "relu6"),
    ("mid_n", 24, 48, 2, 7, 7, "nchw", False, "hardswish"),
    ("wide_n", 33, 136, 2, 6, 11, "strided", True, "silu"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", PW_CASES, ids=lambda c: f"{c[0]}-{c[6]}")
def test_pwconv_gpu_configs(case, dtype, launches):
    label, c_in, c_out, n, h, w, layout, has_residual, act = case
    x = op_oracle.feature_map((n, c_in, h, w), dtype, layout)
    weight = op_oracle.conv_weight((c_out, c_in), dtype)
    scale, shift = op_oracle.random_affine(c_out)
    residual = op_oracle.feature_map((n, c_out, h, w), dtype, "nchw") if has_residual else None
    out = pw.forward(x, weight, scale, shift, act, residual, gpu_tiles=True)
    assert_close(out, op_oracle.pwconv_bn_act(x, weight, scale, shift, act, residual), dtype)

    (launch,) = launches
    m = launch.meta
    block = (m["BLOCK_M"], m["BLOCK_N"], m["BLOCK_K"], m["num_warps"])
    assert launch.kernel == "pw_kernel" and block == pw.GPU_CONFIGS[label]
    assert launch.grid == (math.ceil(n * h * w / m["BLOCK_M"]), math.ceil(c_out / m["BLOCK_N"]))
    assert (n * h * w) % m["BLOCK_M"] and c_in % m["BLOCK_K"] and c_out % m["BLOCK_N"]
    assert launch.grid[0] >= 2


def run_block(c_in, hidden, c_out, k, stride, act, se, dtype, n, h, w, layout, launches):
    """Runs the block with the GPU tiles, checks it against the oracle; the ir_kernel launch."""
    x = op_oracle.feature_map((n, c_in, h, w), dtype, layout, scale=1.0)
    weights, stages = block_weights(c_in, hidden, c_out, k, dtype, se)
    residual = stride == 1 and c_in == c_out
    out = ir.forward(x, weights, stride, act, residual, "relu", "hardsigmoid", gpu_tiles=True)
    ref = op_oracle.inverted_residual(x, *stages, stride, act, residual)
    assert out.shape == ref.shape
    assert_close(out, ref, dtype)
    launch = launches[0]
    m = launch.meta
    assert launch.kernel == "ir_kernel"
    assert (m["BLOCK_OH"], m["BLOCK_OW"], m["BLOCK_HID"], m["num_warps"]) == ir.GPU_CONFIG
    oh, ow = out.shape[2:]
    (rows, partial_h), (cols, partial_w) = tiles(oh, m["BLOCK_OH"]), tiles(ow, m["BLOCK_OW"])
    assert rows >= 2 and cols >= 2 and partial_h and partial_w
    return launch, rows * cols


# The fused kernel's launchable configurations: the GPU tile with every input-channel block
# (BLOCK_CIN up to 32 for fp32, 64 for fp16) and every output-channel block (16..128), as
# resources.py compiles them. (dtype, C_in, BLOCK_CIN): C_in 40 and 72 take two input steps.
FUSED_CIN = [(torch.float32, 16, 16), (torch.float32, 40, 32),
             (torch.float16, 16, 16), (torch.float16, 24, 32), (torch.float16, 72, 64)]
FUSED_COUT = [(16, 16), (24, 32), (40, 64), (100, 128)]  # (C_out, BLOCK_COUT)


@pytest.mark.parametrize("cout", FUSED_COUT, ids=lambda c: f"cout{c[1]}")
@pytest.mark.parametrize("cin", FUSED_CIN, ids=lambda c: f"{str(c[0])[6:]}-cin{c[2]}")
def test_inverted_residual_fused_gpu_configs(cin, cout, launches):
    """Hidden 24 (one full and one partial 16-channel chunk), k 3 and stride 1 (the residual
    where C_in == C_out), output 10x10 in 8x8 tiles; once k 5 and once stride 2 (9x9)."""
    dtype, c_in, block_cin = cin
    c_out, block_cout = cout
    stride = 2 if (c_in, c_out) == (40, 40) else 1
    k = 5 if (c_in, c_out) == (72, 100) else 3
    h = 18 if stride == 2 else 10
    launch, tiles_per_image = run_block(c_in, 24, c_out, k, stride, "hardswish", False, dtype, 1,
                                        h, h, "channels_last", launches)
    assert len(launches) == 1 and launch.meta["PROJECT"]
    assert (launch.meta["BLOCK_CIN"], launch.meta["BLOCK_COUT"]) == (block_cin, block_cout)
    assert launch.grid == (tiles_per_image, 1)


# Split blocks (squeeze-excite, or C_out > 128): the hidden-tensor kernel with each input-channel
# block, then the 1x1 GEMM on the hidden tensor with a GPU config. (dtype, N, C_in, hidden, C_out,
# SE, BLOCK_CIN, pw config); hidden None is a block without expansion.
SPLIT_CASES = [
    (torch.float32, 2, 16, 40, 16, True, 16, "small_n"),
    (torch.float32, 1, 40, 24, 136, False, 32, "wide_n"),
    (torch.float16, 1, 12, 40, 40, True, 16, "mid_n"),
    (torch.float16, 1, 24, 24, 24, True, 32, "small_n"),
    (torch.float16, 1, 72, 24, 136, False, 64, "wide_n"),
    (torch.float32, 1, 24, None, 24, True, None, "small_n"),
]


@pytest.mark.parametrize("case", SPLIT_CASES,
                         ids=lambda c: f"{str(c[0])[6:]}-cin{c[2]}-hid{c[3]}-{c[7]}")
def test_inverted_residual_split_gpu_configs(case, launches):
    """k 3, stride 1 (10x10, with the residual where C_in == C_out) or 2 (19x19 in, 10x10 out)."""
    dtype, n, c_in, hidden, c_out, se, block_cin, pw_label = case
    stride = 1 if c_in == c_out else 2
    h = 10 if stride == 1 else 19
    launch, tiles_per_image = run_block(c_in, hidden, c_out, 3, stride, "relu6", se, dtype, n,
                                        h, h, "nchw", launches)
    assert [launch.kernel for launch in launches] == ["ir_kernel", "pw_kernel"]
    assert not launch.meta["PROJECT"]
    if block_cin is not None:  # without expansion BLOCK_CIN is never used
        assert launch.meta["BLOCK_CIN"] == block_cin
    chunks = math.ceil((hidden or c_in) / launch.meta["BLOCK_HID"])
    assert chunks >= 2 and launch.grid == (n * tiles_per_image, chunks)
    m = launches[1].meta
    assert (m["BLOCK_M"], m["BLOCK_N"], m["BLOCK_K"], m["num_warps"]) == pw.GPU_CONFIGS[pw_label]


def test_fused_no_expansion_gpu_config(launches):
    """A block without expansion (EXPAND=False: the taps read x directly) with the GPU tile."""
    launch, tiles_per_image = run_block(32, None, 16, 3, 1, "relu", False, torch.float16, 2,
                                        10, 11, "strided", launches)
    assert launch.meta["PROJECT"] and launch.grid == (2 * tiles_per_image, 1)


@pytest.mark.parametrize("sms,path", [(132, ["ir_kernel", "pw_kernel"]), (4, ["ir_kernel"])],
                         ids=["h100-split", "4sm-fused"])
def test_inverted_residual_fused_or_split_by_sms(sms, path, launches, monkeypatch):
    """A block the fused kernel takes (no SE, C_out <= 128) at batch 1, 10x10 output in 8x8
    tiles: 4 fused programs. On a GPU of 132 SMs it runs split (one program per tile and hidden
    chunk, then the 1x1 GEMM); on one of 4 SMs, fused; the same result both ways."""
    monkeypatch.setattr(ir, "multiprocessors", lambda device: sms)
    launch, tiles_per_image = run_block(16, 40, 16, 3, 1, "relu6", False, torch.float16, 1,
                                        10, 10, "channels_last", launches)
    assert tiles_per_image == 4
    assert [launch.kernel for launch in launches] == path
    assert launch.meta["PROJECT"] == (len(path) == 1)
    chunks = 1 if launch.meta["PROJECT"] else math.ceil(40 / launch.meta["BLOCK_HID"])
    assert launch.grid == (tiles_per_image, chunks)


def test_multiprocessors_reads_the_tensors_gpu(monkeypatch):
    """The SM count comes from the properties of the tensor's own device (not device 0); off a
    GPU there is none, and the launcher keeps the fused kernel."""
    from types import SimpleNamespace
    from fastdw.kernels.triton._shared import multiprocessors
    asked = []

    def properties(device):
        asked.append(torch.device(device))
        return SimpleNamespace(multi_processor_count=108)

    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    assert multiprocessors(torch.device("cuda", 1)) == 108
    assert asked == [torch.device("cuda", 1)]
    assert multiprocessors(torch.device("cpu")) is None
    assert ir.runs_fused(False, 128, 3, None) and not ir.runs_fused(False, 129, 10**6, None)
    assert not ir.runs_fused(True, 16, 10**6, 132)
    assert ir.runs_fused(False, 16, 132, 132) and not ir.runs_fused(False, 16, 131, 132)


# (dtype, layout, registers): fp16 with channel counts and strides multiples of 16 (or 1) takes
# the 128 cap (two 8-warp blocks per SM); fp32, or an NCHW 4x4 map (row stride 4), takes 255.
MAXNREG_CASES = [(torch.float16, "channels_last", 128), (torch.float32, "channels_last", 255),
                 (torch.float16, "nchw", 255)]


@pytest.mark.parametrize("dtype,layout,registers", MAXNREG_CASES,
                         ids=lambda v: str(v).replace("torch.", ""))
def test_register_cap_by_dtype_and_alignment(dtype, layout, registers, launches):
    """The tl.dot kernels launch with the register cap of their dtype and alignment, under which
    resources.py compiles every config without a spill."""
    x = op_oracle.feature_map((1, 32, 4, 4), dtype, layout)
    weight = op_oracle.conv_weight((16, 32), dtype)
    scale, shift = op_oracle.random_affine(16)
    out = pw.forward(x, weight, scale, shift, "relu", None, gpu_tiles=True)
    assert_close(out, op_oracle.pwconv_bn_act(x, weight, scale, shift, "relu", None), dtype)
    weights, stages = block_weights(32, 32, 16, 3, dtype, False)
    out = ir.forward(x, weights, 1, "relu6", False, "relu", "hardsigmoid", gpu_tiles=True)
    assert_close(out, op_oracle.inverted_residual(x, *stages, 1, "relu6", False), dtype)
    assert [launch.kernel for launch in launches] == ["pw_kernel", "ir_kernel"]
    assert [launch.meta["maxnreg"] for launch in launches] == [registers, registers]


# (dtype, torch.backends.cuda.matmul.allow_tf32, tl.dot input_precision of every launch)
TF32_CASES = [(torch.float32, False, "ieee"), (torch.float32, True, "tf32"),
              (torch.float16, True, "ieee")]


@pytest.mark.parametrize("dtype,allow_tf32,precision", TF32_CASES,
                         ids=lambda v: str(v).replace("torch.", ""))
def test_tf32_follows_torch_matmul_flag(dtype, allow_tf32, precision, launches, monkeypatch):
    """fp32 tl.dot runs as TF32 only when the user allows TF32 for fp32 matmuls (off by default,
    as torch's flag is); fp16 is unaffected. Both tl.dot kernels, the block fused and split.
    The interpreter multiplies in fp32 whatever input_precision says, so the numerics checked
    here are the kernels' (fp32 bound); on a GPU TF32 rounds operands to 10 mantissa bits."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", allow_tf32)
    x = op_oracle.feature_map((1, 32, 4, 4), dtype, "channels_last")
    weight = op_oracle.conv_weight((16, 32), dtype)
    scale, shift = op_oracle.random_affine(16)
    out = pw.forward(x, weight, scale, shift, "relu", None, gpu_tiles=True)
    assert_close(out, op_oracle.pwconv_bn_act(x, weight, scale, shift, "relu", None), dtype)
    weights, stages = block_weights(32, 32, 16, 3, dtype, False)
    ref = op_oracle.inverted_residual(x, *stages, 1, "relu6", False)
    for sms in (None, 2):  # fused (off a GPU), then split (1 program < 2 SMs)
        monkeypatch.setattr(ir, "multiprocessors", lambda device: sms)
        out = ir.forward(x, weights, 1, "relu6", False, "relu", "hardsigmoid", gpu_tiles=True)
        assert_close(out, ref, dtype)
    assert [launch.kernel for launch in launches] == ["pw_kernel", "ir_kernel", "ir_kernel",
                                                      "pw_kernel"]
    assert [launch.meta["PROJECT"] for launch in launches[1:3]] == [True, False]
    assert [launch.meta["PRECISION"] for launch in launches] == [precision] * 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_fused_expand_scratch_in_input_dtype(dtype, launches, monkeypatch):
    """The fused block's expand scratch is in x's dtype (fp16: half the bytes of fp32), one
    region per program, poisoned like the outputs (a tile that read a scratch row it did not
    write would read NaN), and the block still matches the oracle."""
    kernel = ir.ir_kernel
    index = kernel.arg_names.index("scratch_ptr")
    scratch = []

    class Recording:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                scratch.append(args[index])
                assert args[index].isnan().all(), "the scratch escaped the poisoned fixture"
                return kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(ir, "ir_kernel", Recording())
    launch, tiles_per_image = run_block(16, 24, 16, 3, 1, "relu6", False, dtype, 1, 10, 10,
                                        "channels_last", launches)
    m = launch.meta
    row = ir.scratch_row(24, m["BLOCK_HID"], True)  # every hidden chunk: 32 columns
    region = ir.scratch_region(3, 1, m["BLOCK_OH"], m["BLOCK_OW"], row)
    assert [(t.dtype, t.numel()) for t in scratch] == [(dtype, tiles_per_image * region)]


def test_fused_expand_trims_the_window_padding(launches, monkeypatch):
    """The GPU tile (8x8) at k 5, stride 1 has a 12x12 = 144-pixel window: two whole 64-row
    expand steps and one of 16 (144 rows), not three whole steps (192 rows), per program and
    hidden chunk; the block still matches the oracle."""
    from triton.runtime.interpreter import InterpreterBuilder
    rows = []
    create_dot = InterpreterBuilder.create_dot

    def counting_dot(self, a, b, *rest):
        if b.data.shape == (16, 16):  # the expand step: BLOCK_CIN x BLOCK_HID (project: x 32)
            rows.append(a.data.shape[0])
        return create_dot(self, a, b, *rest)

    monkeypatch.setattr(InterpreterBuilder, "create_dot", counting_dot)
    launch, tiles_per_image = run_block(16, 24, 24, 5, 1, "relu6", False, torch.float16, 1,
                                        10, 10, "channels_last", launches)
    assert launch.meta["PROJECT"] and launch.meta["BLOCK_COUT"] == 32
    assert ir.expand_steps(ir.halo_pixels(5, 1, 8, 8), 64) == [64, 64, 16]
    # per tile, each step for its 2 hidden chunks of 16
    assert rows == [64, 64, 64, 64, 16, 16] * tiles_per_image


@pytest.mark.parametrize("dtype,c_in,c_out,k,stride", [
    (torch.float16, 48, 48, 3, 1), (torch.float32, 24, 40, 5, 2)], ids=["fp16-k3s1", "fp32-k5s2"])
def test_fused_block_reads_its_x_window_once(dtype, c_in, c_out, k, stride, launches,
                                             monkeypatch):
    """Each fused program reads the input pixels of its tile's window once for all of its 3
    hidden chunks (C_IN within one resident BLOCK_CIN tile), and the tile's pixels once more for
    the residual: the elements the interpreter loads from x are counted."""
    import numpy as np
    from triton.runtime.interpreter import InterpreterBuilder
    x = op_oracle.feature_map((1, c_in, 10 * stride, 10 * stride), dtype, "channels_last",
                              scale=1.0)
    span = (x.data_ptr(), x.data_ptr() + x.untyped_storage().nbytes())
    read = []
    masked_load = InterpreterBuilder.create_masked_load

    def counting(self, ptrs, mask, *rest):
        at = ptrs.data[mask.data]
        read.append(int(((at >= span[0]) & (at < span[1])).sum()))
        return masked_load(self, ptrs, mask, *rest)

    monkeypatch.setattr(InterpreterBuilder, "create_masked_load", counting)
    weights, stages = block_weights(c_in, 40, c_out, k, dtype, False)
    residual = stride == 1 and c_in == c_out
    out = ir.forward(x, weights, stride, "hardswish", residual, "relu", "hardsigmoid",
                     gpu_tiles=True)
    assert_close(out, op_oracle.inverted_residual(x, *stages, stride, "hardswish", residual),
                 dtype)
    (launch,) = launches
    assert launch.meta["PROJECT"] and launch.meta["BLOCK_CIN"] >= c_in
    assert math.ceil(40 / launch.meta["BLOCK_HID"]) == 3
    h = x.shape[2]
    window = [[max(0, min(t * 8 * stride - (k - 1) // 2 + 7 * stride + k, h)
                   - max(t * 8 * stride - (k - 1) // 2, 0)) for t in range(2)]] * 2
    pixels = sum(np.outer(*window).flat)  # the 2x2 tiles' windows, inside the image
    assert sum(read) == c_in * (pixels + (10 * 10 if residual else 0))


@pytest.mark.parametrize("layout,vec", [("channels_last", 8), ("nchw", 1)])
def test_block_vector_width_and_padded_hidden(layout, vec, launches, monkeypatch):
    """C 24 (V2's narrow blocks): the block kernel takes the ints / VEC = 8 on channels_last
    (vector loads and stores where C % 16 != 0), 1 on NCHW; split, the hidden tensor's pixels
    are padded from 40 to 48 channels with zeros, so the 1x1 GEMM reads K = 48 (a multiple of
    16: its VEC_K is 1, the aligned kernel) in vectors; fused and split match the oracle."""
    handed = []
    project = ir.pw_forward

    def recording(hidden, weight, *args, **kwargs):
        handed.append((hidden.clone(), hidden.stride(), weight.shape))
        return project(hidden, weight, *args, **kwargs)

    monkeypatch.setattr(ir, "pw_forward", recording)
    for sms in (None, 132):  # fused off a GPU; split on 132 SMs (4 programs)
        monkeypatch.setattr(ir, "multiprocessors", lambda device: sms)
        run_block(24, 40, 24, 3, 1, "relu6", False, torch.float16, 1, 10, 10, layout, launches)
    assert [launch.kernel for launch in launches] == ["ir_kernel", "ir_kernel", "pw_kernel"]
    assert [launch.meta["VEC"] for launch in launches[:2]] == [vec, vec]
    (hidden, strides, weight_shape), = handed
    assert hidden.shape == (1, 48, 10, 10) and strides[1] == 1 and strides[3] == 48
    assert weight_shape == (24, 48)
    assert hidden[:, 40:].eq(0).all() and not hidden[:, :40].eq(0).all()
    assert launches[2].meta["VEC_K"] == 1


def test_split_block_copies_no_weight_when_hidden_needs_no_padding(launches, monkeypatch):
    """Split with a hidden width that is already a multiple of 16 (V2's): the project weight
    and the gate reach the 1x1 GEMM as they are, with no per-call F.pad copy."""
    pads = []
    pad = ir.F.pad
    monkeypatch.setattr(ir.F, "pad", lambda *args, **kwargs: pads.append(1) or pad(*args,
                                                                                   **kwargs))
    monkeypatch.setattr(ir, "multiprocessors", lambda device: 132)
    run_block(24, 48, 24, 3, 1, "relu6", False, torch.float16, 1, 10, 10, "channels_last",
              launches)
    assert [launch.kernel for launch in launches] == ["ir_kernel", "pw_kernel"]
    assert pads == []


def residency_of(monkeypatch, looped, plain):
    """The launcher's launch_plan told that the persistent and the plain variant compile to
    `looped` and `plain` = (programs the GPU runs at once, spilled bytes): what a GPU's
    compiled kernels would report, which the interpreter has none of."""
    plan = ir.launch_plan
    monkeypatch.setattr(ir, "launch_plan", lambda *args, residency: plan(
        *args, residency=lambda persistent: looped if persistent else plain))


def test_persistent_programs_loop_over_the_tiles(launches, monkeypatch):
    """More tiles than the GPU runs at once (3 images x 4 tiles on 1 SM, 2 programs by the
    fp16 register cap), with the persistent variant as resident as the plain one: one launch
    of the 3 programs the GPU runs at once, each taking every third tile and reusing its
    scratch; the block matches the oracle."""
    monkeypatch.setattr(ir, "multiprocessors", lambda device: 1)
    residency_of(monkeypatch, looped=(3, 0), plain=(3, 0))
    run_block(16, 48, 16, 3, 1, "relu6", False, torch.float16, 3, 10, 10, "channels_last",
              launches)
    assert [(launch.grid, launch.meta["PROJECT"], launch.meta["PERSISTENT"])
            for launch in launches] == [((3, 1), True, True)]


@pytest.mark.parametrize("looped", [(3, 24), (1, 0)], ids=["spills", "fewer-resident"])
def test_plain_waves_where_the_persistent_variant_costs(looped, launches, monkeypatch):
    """Where the persistent variant spills or runs fewer programs at once than the plain one
    (its loop takes more registers), the plain kernel launches in waves of whole images: as
    many as SCRATCH_BUDGET allows (here one byte: none) and at least the programs the GPU runs
    at once (3: one image of 4 tiles per wave); the block matches the oracle."""
    monkeypatch.setattr(ir, "multiprocessors", lambda device: 1)
    monkeypatch.setattr(ir, "SCRATCH_BUDGET", 1)
    residency_of(monkeypatch, looped=looped, plain=(3, 0))
    run_block(16, 48, 16, 3, 1, "relu6", False, torch.float16, 3, 10, 10, "channels_last",
              launches)
    assert [(launch.grid, launch.meta["PERSISTENT"]) for launch in launches] == \
        [((4, 1), False)] * 3


def test_launch_plan():
    """(persistent, images per launch, programs per launch) for 10 images of 4 tiles, 2 hidden
    chunks, a scratch region of 1 KiB; on 4 SMs holding 2 fp16 programs each by the cap."""
    def never(persistent):
        pytest.fail("compiled kernels asked for where none is needed")
    budget = ir.SCRATCH_BUDGET // (2 * 1024)
    assert ir.launch_plan(10, 4, 2, 1024, None, 128, 8, never) == (True, 10, min(40, budget))
    assert ir.launch_plan(10, 4, 2, ir.SCRATCH_BUDGET, None, 128, 8, never) == (True, 10, 1)
    assert ir.launch_plan(2, 2, 2, 1024, 4, 128, 8, never) == (False, 2, 4)  # 8 programs fit
    both = {True: (12, 0), False: (12, 0)}
    assert ir.launch_plan(10, 4, 2, 1024, 4, 128, 8, both.get) == (True, 10, 6)
    spills = {True: (12, 8), False: (12, 0)}
    assert ir.launch_plan(10, 4, 2, 1024, 4, 128, 8, spills.get) == (False, 10, 40)
    assert ir.launch_plan(10, 4, 2, ir.SCRATCH_BUDGET, 4, 128, 8, spills.get) == (False, 2, 8)


@pytest.mark.parametrize("sms", [None, 4], ids=["off-gpu", "4sm"])
@pytest.mark.parametrize("se", [False, True], ids=["fused", "split-se"])
def test_empty_batch_launches_no_block_kernel(se, sms, launches, monkeypatch):
    """N = 0 (the ops route it to reference, a direct kernel call need not): an empty output of
    the block's shape and no block kernel launch, off a GPU and on one; launch_plan steps through
    the batch at least an image at a time."""
    monkeypatch.setattr(ir, "multiprocessors", lambda device: sms)
    x = op_oracle.feature_map((0, 16, 10, 10), torch.float16, "channels_last")
    weights, _ = block_weights(16, 24, 16, 3, torch.float16, se)
    out = ir.forward(x, weights, 2, "relu6", False, "relu", "hardsigmoid", gpu_tiles=True)
    assert out.shape == (0, 16, 5, 5) and out.dtype == torch.float16
    assert "ir_kernel" not in [launch.kernel for launch in launches]
    assert ir.launch_plan(0, 4, 2, 1024, sms, 128, 8, None)[1] >= 1


def test_plain_waves_where_no_compiled_kernel_comes_back(launches, monkeypatch):
    """ir_kernel.warmup hands back no compiled kernel under the interpreter (nor on a GPU where
    a jit_cache_hook takes the compile over): with more tiles than the GPU surely runs at once
    (2 images x 4 tiles on 1 SM, 2 fp16 programs by the register cap) the launcher cannot weigh
    the persistent variant and launches the plain one, in waves of at least the programs the
    register cap fits; the block matches the oracle."""
    monkeypatch.setattr(ir, "multiprocessors", lambda device: 1)
    run_block(16, 48, 16, 3, 1, "relu6", False, torch.float16, 2, 10, 10, "channels_last",
              launches)
    assert [(launch.grid, launch.meta["PERSISTENT"]) for launch in launches] == [((8, 1), False)]
    unknown = {True: None, False: None}.get
    assert ir.launch_plan(10, 4, 2, ir.SCRATCH_BUDGET, 4, 128, 8, unknown) == (False, 1, 4)


def test_plain_waves_launch_the_variant_whose_residency_was_weighed(monkeypatch):
    """The residency warmups and the launches hand ir_kernel the same TILES for the plain
    variant (Triton specialises an int by whether it is 1 or a multiple of 16, so a different
    value is another compile, not the one weighed): 256 images of 4 tiles in waves whose tiles
    (264, 232) are no multiple of 16 where the batch's (1024) is. Stub kernels on meta
    tensors, the looped variant less resident than the plain one."""
    seen = []

    class Stub:
        def warmup(self, *args, grid, **kwargs):
            seen.append(("warmup", kwargs["PERSISTENT"], kwargs["TILES"]))
            return kwargs["PERSISTENT"]  # compiled_residency below tells the variants apart

        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append(
                ("launch", kwargs["PERSISTENT"], kwargs["TILES"]))

    monkeypatch.setattr(ir, "ir_kernel", Stub())
    monkeypatch.setattr(ir, "compiled_residency", lambda looped: (100 if looped else 264, 0))
    monkeypatch.setattr(ir, "multiprocessors", lambda device: 132)
    weights, _ = block_weights(24, 144, 24, 3, torch.float16, False)
    weights = type(weights)(*(t if t is None else t.to("meta") for t in weights))
    x = torch.empty(256, 24, 56, 56, dtype=torch.float16, device="meta")
    ir.forward(x.contiguous(memory_format=torch.channels_last), weights, 1, "relu6", True,
               "relu", "hardsigmoid")
    launched = {tiles for kind, looped, tiles in seen if kind == "launch"}
    assert {looped for kind, looped, _ in seen if kind == "launch"} == {False}
    assert len(seen) > 3  # the two warmups, then waves
    assert launched == {tiles for kind, looped, tiles in seen if kind == "warmup" and not looped}
