"""The CUDA pwconv_bn_act kernels (csrc/cuda/pwconv_bn_act.cuh) run through the emulator, through
the cuda backend's function (fastdw/kernels/cuda.py), against stock PyTorch in float64 on fresh
random inputs (tests/ops/op_oracle.py, bounds of tests/numerics.py), with outputs poisoned.

The cases cover every launch a GPU would execute: the FFMA kernel for each dtype (the only one
for float32; for float16/bfloat16 where the channel count is not a multiple of 8 or the rows are
not 16-byte aligned) and the tensor-core kernel for float16 and bfloat16, each with and without
a residual, on tiles cut by the pixel count, the output channels and the input channels (a
partial 32-channel chunk of the tensor-core kernel, more than one chunk, more than one block
each way)."""
import pytest
import torch

import numerics
import op_oracle as oracle
from fastdw.kernels import cuda
from oracle_check import assert_matches_oracle

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NAMES = {torch.float32: "float", torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}


def kernel_name(dtype, kind):
    return (f"void fastdw_cuda::pwconv_bn_act_{kind}<{NAMES[dtype]}>"
            f"(fastdw_cuda::PwParams<{NAMES[dtype]}>)")


def run(emulator, shape, c_out, dtype, act="relu6", residual=False, offset=False,
        weight_4d=True):
    """The kernel's output for fresh random inputs, checked against the float64 oracle; returns
    the launch the emulator ran."""
    n, c, h, w = shape
    if offset:  # channels start one element past a 16-byte boundary
        x = oracle.feature_map((n, c + 1, h, w), dtype, "channels_last")[:, 1:]
    else:
        x = oracle.feature_map(shape, dtype, "channels_last")
    weight = oracle.conv_weight((c_out, c, 1, 1) if weight_4d else (c_out, c), dtype)
    scale, shift = oracle.random_affine(c_out)
    res = oracle.feature_map((n, c_out, h, w), dtype, "channels_last") if residual else None
    y = cuda.pwconv_bn_act(x, weight, scale, shift, act, res)
    launch = emulator.last_launch()
    ref = oracle.pwconv_bn_act(x, weight, scale, shift, act, res)
    assert_matches_oracle(y, ref, x, launch)
    return launch


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_kernel(emulator, dtype, residual):
    """Each kernel of the dtype on tiles cut every way: 70 pixels (a full 64-pixel tile and a
    partial one), 40 or 72 output channels (partial column tiles, two of them), 24 input
    channels (a partial chunk), 72 (three chunks), 13 (FFMA: not a multiple of 8)."""
    seen = set()
    for c_in, c_out in ((24, 40), (72, 72), (13, 40), (8, 3)):
        seen.add(run(emulator, (2, c_in, 5, 7), c_out, dtype, residual=residual)
                 .split(" grid")[0])
    seen.add(run(emulator, (1, 16, 4, 4), 16, dtype, residual=residual, offset=True)
             .split(" grid")[0])
    expected = {kernel_name(dtype, "ffma")}
    if dtype != torch.float32:
        expected.add(kernel_name(dtype, "mma"))
    assert seen == expected


@pytest.mark.usefixtures("poisoned_outputs")
def test_launch_shapes(emulator):
    """The grid tiles pixels by 64 and output channels by 64; the tensor-core kernel runs 128
    threads, the FFMA one 256."""
    launch = run(emulator, (1, 32, 9, 15), 130, torch.float16)
    assert "pwconv_bn_act_mma" in launch and "grid=(3,3,1) block=(128,1,1)" in launch, launch
    launch = run(emulator, (1, 32, 9, 15), 130, torch.float32)
    assert "pwconv_bn_act_ffma" in launch and "grid=(3,3,1) block=(256,1,1)" in launch, launch


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", DTYPES)
def test_no_shared_memory_race(emulator, monkeypatch, dtype):
    """Under the race detector (read at each launch), both kernels' barriers order every
    shared-memory write, cp.async landings included, before the reads of other threads."""
    monkeypatch.setenv("FASTDW_CUDA_EMULATE_RACECHECK", "1")
    for c_in in (72, 13):  # tensor cores (three chunks) for 16-bit dtypes, and FFMA
        run(emulator, (2, c_in, 5, 7), 70, dtype, residual=True)


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act", ["none", "relu", "relu6", "hardswish", "hardsigmoid", "silu"])
def test_activations(emulator, act, dtype):
    run(emulator, (1, 16, 3, 5), 24, dtype, act=act, residual=True, weight_4d=False)


def test_nchw_runs_on_reference(emulator):
    x = oracle.feature_map((2, 6, 5, 5), torch.float32, "nchw")
    weight = oracle.conv_weight((4, 6), torch.float32)
    scale, shift = oracle.random_affine(4)
    y = cuda.pwconv_bn_act(x, weight, scale, shift, "relu", None)
    assert y.is_contiguous()
    numerics.assert_close(y, oracle.pwconv_bn_act(x, weight, scale, shift, "relu"),
                          torch.float32)


@pytest.mark.parametrize("change, message", [
    (dict(x=torch.randn(1, 4, 5, 5, dtype=torch.float64)), "x must be float32, float16 or bf"),
    (dict(x=torch.randn(4, 5, 5)), r"x must be 4-D"),
    (dict(x=torch.randn(1, 4, 5, 5)), "x must have channel stride 1"),
    (dict(weight=torch.randn(3, 5)), r"weight must be \(C_out, 4\) or \(C_out, 4, 1, 1\)"),
    (dict(weight=torch.randn(3, 4, 3, 3)), r"weight must be \(C_out, 4\)"),
    (dict(weight=torch.randn(3, 4, dtype=torch.float16)), "weight must have x's dtype"),
    (dict(scale=torch.randn(4)), r"scale must have shape \(3\)"),
    (dict(shift=torch.ones(3, dtype=torch.int32)), "shift must be a floating-point tensor"),
    (dict(residual=torch.randn(1, 4, 5, 5)), r"residual must have shape \(1, 3, 5, 5\)"),
    (dict(residual=torch.randn(1, 3, 5, 5, dtype=torch.float16)), "residual must have x's"),
    (dict(act="gelu"), "act must be one of"),
])
def test_bad_arguments_are_named(emulator, change, message):
    """The C++ op checks every argument before a launch, naming it."""
    args = dict(x=torch.randn(1, 4, 5, 5).to(memory_format=torch.channels_last),
                weight=torch.randn(3, 4), scale=torch.rand(3), shift=torch.rand(3), act="relu",
                residual=None)
    args.update(change)
    with pytest.raises(RuntimeError, match=message):
        emulator.pwconv_bn_act(*args.values())
