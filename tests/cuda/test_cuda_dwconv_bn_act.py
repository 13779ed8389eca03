"""The CUDA dwconv_bn_act kernels (csrc/cuda/dwconv_bn_act.cuh) run through the emulator,
through the cuda backend's function (fastdw/kernels/cuda.py), against stock PyTorch in float64 on
fresh random inputs (tests/ops/op_oracle.py, bounds of tests/numerics.py), with outputs poisoned.

The cases cover every launch a GPU would execute: each template instantiation of both kernels (k
in {3, 5, 7} x stride {1, 2}, and the generic path: dilation, other k, other strides) for each
dtype; for channels_last the 16-byte path and the element-wise one (channel counts that are not
a multiple of a 16-byte group, an input whose channels do not start 16-byte aligned), the last
partial block of pixels and more than one block of channels; for NCHW each tile width, one and
several planes per block (the last block's partial), partial tiles, a strided input, and the
window too large for shared memory (a channels_last copy instead); channel multipliers on
both."""
import pytest
import torch

import numerics
import op_oracle as oracle
from fastdw.kernels import cuda
from oracle_check import assert_matches_oracle

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TEMPLATED = [(3, 1), (3, 2), (5, 1), (5, 2), (7, 1), (7, 2)]
NONFINITE = (float("nan"), float("inf"), -float("inf"))
NAMES = {torch.float32: "float", torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}


def kernel_name(dtype, k, stride, layout="nhwc"):
    return f"fastdw_cuda::dwconv_bn_act_{layout}<{NAMES[dtype]}, {k}, {stride}>"


def run(emulator, shape, dtype, k, stride=1, dilation=1, padding=None, act="relu6",
        offset=False, layout="channels_last", mult=1):
    """The kernel's output for fresh random inputs (x in `layout`, weight (C*mult, 1, k, k)),
    checked against the float64 oracle; returns the launch the emulator ran ("kernel grid=...
    block=... seed=...")."""
    n, c, h, w = shape
    if offset:  # channels start one element past a 16-byte boundary: the element-wise path
        x = oracle.feature_map((n, c + 1, h, w), dtype, "channels_last")[:, 1:]
    else:
        x = oracle.feature_map(shape, dtype, layout)
    weight = oracle.conv_weight((c * mult, 1, k, k), dtype)
    scale, shift = oracle.random_affine(c * mult)
    padding = dilation * (k - 1) // 2 if padding is None else padding
    y = cuda.dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act)
    launch = emulator.last_launch()
    ref = oracle.dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act)
    assert_matches_oracle(y, ref, x, launch)
    return launch


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_instantiation(emulator, dtype):
    """Each of the launcher's kernels for this dtype runs, on a 16-byte-aligned channel count
    (vector path) and on one that is not (element-wise tail)."""
    group = 16 // torch.empty((), dtype=dtype).element_size()
    seen = set()
    for channels in (2 * group, group + 3):
        for k, stride in TEMPLATED:
            seen.add(run(emulator, (2, channels, 9, 11), dtype, k, stride).split(" grid")[0])
        for k, stride, dilation in ((3, 1, 2), (1, 1, 1), (4, 3, 1), (3, 2, 3)):
            seen.add(run(emulator, (1, channels, 10, 9), dtype, k, stride, dilation)
                     .split(" grid")[0])
    expected = {f"void {kernel_name(dtype, k, s)}(fastdw_cuda::DwParams<{NAMES[dtype]}>)"
                for k, s in TEMPLATED + [(0, 0)]}
    assert seen == expected


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_nchw_instantiation(emulator, dtype):
    """Each of the NCHW launcher's kernels for this dtype runs."""
    seen = set()
    for k, stride in TEMPLATED:
        seen.add(run(emulator, (2, 3, 9, 11), dtype, k, stride, layout="nchw").split(" grid")[0])
    for k, stride, dilation in ((3, 1, 2), (1, 1, 1), (4, 3, 1)):
        seen.add(run(emulator, (1, 2, 10, 9), dtype, k, stride, dilation, layout="nchw")
                 .split(" grid")[0])
    expected = {f"void {kernel_name(dtype, k, s, 'nchw')}(fastdw_cuda::DwParams<{NAMES[dtype]}>)"
                for k, s in TEMPLATED + [(0, 0)]}
    assert seen == expected


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("shape, k, stride, dilation, grid", [
    ((3, 5, 7, 6), 3, 1, 1, "grid=(1,1,1)"),      # 8 wide, 2 strips: 16 planes a block, 15 used
    ((1, 3, 13, 14), 5, 1, 1, "grid=(1,1,1)"),    # 16 wide, 4 strips: 4 planes a block
    ((1, 2, 37, 40), 3, 1, 1, "grid=(2,4,1)"),    # 32 wide, 8 strips: 2 x 2 tiles a plane
    ((1, 2, 70, 70), 3, 3, 20, "nhwc"),           # the window exceeds the shared memory
])
def test_nchw_launch_shapes(emulator, shape, k, stride, dilation, grid):
    launch = run(emulator, shape, torch.float32, k, stride, dilation, layout="nchw")
    assert grid in launch, launch
    run(emulator, shape, torch.float16, k, stride, dilation, layout="strided")


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("layout, kernel", [("channels_last", "nhwc<float, 0, 0>"),
                                            ("nchw", "nchw<float, 3, 2>")])
@pytest.mark.parametrize("mult", [2, 3])
def test_channel_multiplier(emulator, layout, kernel, mult):
    """weight (C*m, 1, k, k): output channel c reads input channel c // m."""
    assert kernel in run(emulator, (2, 5, 9, 8), torch.float32, 3, 2, layout=layout, mult=mult)
    run(emulator, (1, 4, 6, 7), torch.bfloat16, 3, layout=layout, mult=mult)


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("act", ["none", "relu", "relu6", "hardswish", "hardsigmoid", "silu"])
def test_activations(emulator, act):
    run(emulator, (2, 12, 7, 6), torch.float32, 3, act=act)


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", DTYPES)
def test_launch_shapes(emulator, dtype):
    """Several blocks of channels (grid.y > 1), a single channel, odd counts, a pixel count that
    leaves the last block partial, an unaligned input, padding beyond the window."""
    group = 16 // torch.empty((), dtype=dtype).element_size()
    launch = run(emulator, (1, 20 * group, 5, 7), dtype, 3)
    assert "grid=(3,2,1) block=(16,16,1)" in launch, launch  # 35 pixels: 2 full + 1 partial
    for shape in ((3, 1, 6, 5), (1, 7, 8, 3), (2, 33, 5, 9)):
        run(emulator, shape, dtype, 3)
    run(emulator, (2, 2 * group, 6, 7), dtype, 3, offset=True)
    run(emulator, (1, group, 4, 4), dtype, 5, stride=2, padding=4)


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("layout, k", [("channels_last", 3), ("channels_last", 4), ("nchw", 3)])
def test_nonfinite_weight_reaches_the_border(emulator, layout, k):
    """A NaN or infinite tap makes its channel NaN or infinite at every output, the padded
    border included, as in stock PyTorch: a padded tap multiplies a zero (0 * NaN is NaN), it is
    not skipped. k = 3 runs a templated kernel, k = 4 the generic one."""
    x = oracle.feature_map((2, 8, 6, 5), torch.float32, layout)
    weight = oracle.conv_weight((8, 1, k, k), torch.float32)
    weight[1, 0, 0, 0], weight[2, 0, -1, -1], weight[3, 0, 0, -1] = NONFINITE
    scale, shift = oracle.random_affine(8)
    y = cuda.dwconv_bn_act(x, weight, scale, shift, 1, 1, 1, "none").double()
    ref = oracle.dwconv_bn_act(x, weight, scale, shift, 1, 1, 1, "none")
    for where in (torch.isnan, torch.isposinf, torch.isneginf):
        assert torch.equal(where(y), where(ref)), f"{where.__name__} at other places than stock"
    finite = ref.isfinite()
    numerics.assert_close(y[finite], ref[finite], torch.float32)


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("stride, padding, dilation", [(1, 2**30, 2**30), (2**31 - 1, 1, 1)])
def test_extents_near_int32_limit(emulator, layout, stride, padding, dilation):
    """A dilation, padding or stride near 2**31 (the largest the op accepts) does not overflow
    the NCHW kernel's window arithmetic: such a window never fits shared memory, so the
    channels_last kernel runs it. Only the centre tap (dilation 2**30) or the first output
    pixel (stride 2**31 - 1) sees the image: the oracle is that 1x1 depthwise conv."""
    x = oracle.feature_map((2, 3, 5, 6), torch.float32, layout)
    weight = oracle.conv_weight((3, 1, 3, 3), torch.float32)
    scale, shift = oracle.random_affine(3)
    y = cuda.dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, "relu")
    if dilation > 1:
        ref = oracle.dwconv_bn_act(x, weight[..., 1:2, 1:2], scale, shift, 1, 0, 1, "relu")
    else:
        ref = oracle.dwconv_bn_act(x[..., :2, :2], weight, scale, shift, 1, 1, 1,
                                   "relu")[..., :1, :1]
    assert_matches_oracle(y, ref, x, emulator.last_launch())


@pytest.mark.usefixtures("poisoned_outputs")
def test_nchw_plane_over_the_grid_limit(emulator):
    """An NCHW plane of more tiles than grid.y allows (65535) runs as a channels_last copy, as
    stock PyTorch runs it, rather than being refused."""
    x = oracle.feature_map((1, 2, 1, 32 * 65535 + 1), torch.float32, "nchw")
    weight = oracle.conv_weight((2, 1, 1, 1), torch.float32)
    scale, shift = oracle.random_affine(2)
    y = cuda.dwconv_bn_act(x, weight, scale, shift, 1, 0, 1, "relu6")
    assert "dwconv_bn_act_nhwc" in emulator.last_launch()
    assert_matches_oracle(y, oracle.dwconv_bn_act(x, weight, scale, shift, 1, 0, 1, "relu6"), x,
                          emulator.last_launch())


def test_float64_runs_on_reference(emulator):
    """float64 has no kernel: the reference backend runs it, right and in the input's layout."""
    x = oracle.feature_map((2, 6, 7, 7), torch.float64, "nchw")
    weight = oracle.conv_weight((6, 1, 3, 3), torch.float64)
    scale, shift = (t.double() for t in oracle.random_affine(6))
    y = cuda.dwconv_bn_act(x, weight, scale, shift, 1, 1, 1, "relu")
    assert y.is_contiguous() and y.dtype == torch.float64
    numerics.assert_close(y, oracle.dwconv_bn_act(x, weight, scale, shift, 1, 1, 1, "relu"),
                          torch.float64)


@pytest.mark.parametrize("change, message", [
    (dict(x=torch.randn(1, 4, 5, 5, dtype=torch.float64)), "x must be float32, float16 or bf"),
    (dict(x=torch.randn(4, 5, 5)), r"x must be 4-D"),
    (dict(weight=torch.randn(6, 1, 3, 3)), r"weight must be \(C\*m, 1, k, k\) with C = 4"),
    (dict(weight=torch.randn(4, 1, 3, 2)), r"weight must be \(C\*m, 1, k, k\)"),
    (dict(scale=torch.randn(8), weight=torch.randn(8, 1, 3, 3)), r"shift must have shape \(8\)"),
    (dict(scale=torch.randn(5)), r"scale must have shape \(4\)"),
    (dict(shift=torch.ones(4, dtype=torch.int32)), "shift must be a floating-point tensor"),
    (dict(stride=0), r"stride must be in \[1, "),
    (dict(padding=-1), r"padding must be in \[0, "),
    (dict(dilation=0), r"dilation must be in \[1, "),
    (dict(weight=torch.randn(4, 1, 9, 9)), "x \\(height\\): input size 5 is too small"),
    (dict(act="gelu"), "act must be one of"),
    (dict(padding=2**31 - 1), r"x \(height\): output size 4294967297 .* padding 2147483647"),
])
def test_bad_arguments_are_named(emulator, change, message):
    """The C++ op checks every argument before a launch, naming it."""
    args = dict(x=torch.randn(1, 4, 5, 5).to(memory_format=torch.channels_last),
                weight=torch.randn(4, 1, 3, 3), scale=torch.rand(4), shift=torch.rand(4),
                stride=1, padding=1, dilation=1, act="relu")
    args.update(change)
    with pytest.raises(RuntimeError, match=message):
        emulator.dwconv_bn_act(*args.values())
