"""The CUDA inverted_residual kernel (csrc/cuda/inverted_residual.cuh) run through the emulator,
through the cuda backend's function (fastdw/kernels/cuda.py), against stock PyTorch in float64 on
fresh random inputs (tests/ops/op_oracle.py, bounds of tests/numerics.py), with outputs poisoned.

The fused kernel has one instantiation per dtype, with k, the stride and the expand chosen at run
time, so the cases cover what its launches vary: k 3 / 5 / 7, stride 1 / 2, with and without an
expand, with the residual, tiles cut at the right and bottom borders (the top and left are the
padding), several hidden chunks (the last partial), more than one C_in chunk, more than one
block of output channels; and the host's other choice, the building blocks, for a window over
the shared-memory limit of the emulated GPU. Blocks with a squeeze-excite run two kernels (the
first the fused one's steps 1 and 2, writing the depthwise output and per-tile sums; the second
the gate and the project), checked the same way, with both gates and inner activations."""
import pytest
import torch

import numerics
import op_oracle as oracle
from fastdw.contract import BlockWeights
from fastdw.kernels import cuda, reference
from oracle_check import assert_matches_oracle

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NAMES = {torch.float32: "float", torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}


def fused_kernel(dtype):
    return (f"void fastdw_cuda::inverted_residual_nhwc<{NAMES[dtype]}, false>"
            f"(fastdw_cuda::IrParams<{NAMES[dtype]}>)")


def se_kernel(dtype):
    return (f"void fastdw_cuda::se_gate_project<{NAMES[dtype]}>"
            f"(fastdw_cuda::SeParams<{NAMES[dtype]}>)")


def make(shape, hidden, c_out, k, dtype, squeeze=None):
    """(x, BlockWeights, oracle stage triples and SE tuple) with fresh random tensors; hidden
    None: no expand; squeeze None: no squeeze-excite."""
    n, c_in, h, w = shape
    x = oracle.feature_map(shape, dtype, "channels_last")
    expand = None
    if hidden is not None:
        expand = (oracle.conv_weight((hidden, c_in), dtype), *oracle.random_affine(hidden))
    else:
        hidden = c_in
    dw = (oracle.conv_weight((hidden, 1, k, k), dtype), *oracle.random_affine(hidden))
    project = (oracle.conv_weight((c_out, hidden), dtype), *oracle.random_affine(c_out))
    se = None
    if squeeze is not None:  # biases in float32, as the public op passes them
        se = (oracle.conv_weight((squeeze, hidden), dtype), torch.randn(squeeze) * 0.5,
              oracle.conv_weight((hidden, squeeze), dtype), torch.randn(hidden) * 0.5)
    block = BlockWeights(*(expand or (None,) * 3), *dw, *project, *(se or (None,) * 4))
    return x, block, (expand, dw, project, se)


def run(emulator, shape, hidden, c_out, k, stride, dtype, act="relu6", residual=False,
        squeeze=None, se_act="relu", se_gate="hardsigmoid"):
    """The kernel's output for fresh random inputs, checked against the float64 oracle; returns
    the launch the emulator ran last."""
    x, block, (expand, dw, project, se) = make(shape, hidden, c_out, k, dtype, squeeze)
    y = cuda.inverted_residual(x, block, stride, act, residual, se_act, se_gate)
    launch = emulator.last_launch()
    ref = oracle.inverted_residual(x, expand, dw, project, se, stride, act, residual, se_act,
                                   se_gate)
    assert_matches_oracle(y, ref, x, launch)
    return launch


# (shape, hidden or None, C_out, k, stride, residual): output tiles of 8 x 8 pixels cut at the
# right and bottom, hidden chunks of 32 and C_in chunks of 32 (the last ones partial), blocks of
# 64 output channels.
CASES = [
    pytest.param((1, 40, 9, 5), 72, 40, 3, 1, True, id="k3-s1-expand-residual-3-chunks"),
    pytest.param((1, 12, 17, 9), 24, 70, 3, 2, False, id="k3-s2-expand-2-cout-blocks"),
    pytest.param((2, 36, 9, 5), None, 20, 5, 1, False, id="k5-s1-no-expand-batch2"),
    pytest.param((1, 16, 17, 9), 40, 16, 5, 2, False, id="k5-s2-expand"),
    pytest.param((1, 8, 9, 6), None, 8, 7, 1, True, id="k7-s1-no-expand-residual"),
]


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, hidden, c_out, k, stride, residual", CASES)
def test_fused_kernel(emulator, shape, hidden, c_out, k, stride, residual, dtype):
    launch = run(emulator, shape, hidden, c_out, k, stride, dtype, residual=residual)
    assert launch.startswith(fused_kernel(dtype)), launch


@pytest.mark.usefixtures("poisoned_outputs")
def test_launch_shape(emulator):
    """One block per 8 x 8 output tile of each image, by 64 output channels; 128 threads."""
    launch = run(emulator, (2, 8, 17, 9), 16, 65, 3, 1, torch.float16)
    assert "grid=(12,2,1) block=(128,1,1)" in launch, launch  # 2 images x 3 x 2 tiles


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("act", ["none", "relu", "hardswish", "hardsigmoid", "silu"])
def test_activations(emulator, act):
    run(emulator, (1, 8, 5, 6), 16, 8, 3, 1, torch.float32, act=act, residual=True)


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_shared_memory_race(emulator, monkeypatch, dtype):
    """Under the race detector, the barriers order every shared-memory write before the reads
    of other threads, across C_in chunks, window blocks and hidden chunks."""
    monkeypatch.setenv("FASTDW_CUDA_EMULATE_RACECHECK", "1")
    run(emulator, (1, 40, 9, 5), 40, 40, 3, 1, dtype, residual=True)


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_windows_over_the_shared_memory_limit_run_in_stages(emulator, monkeypatch, dtype):
    """k = 21 at stride 2 needs a 35 x 35 pixel window: over sm_80's 163 KB of shared memory
    per block, so the building blocks run (the project's pwconv launch last); within sm_90's
    227 KB, the fused kernel."""
    launch = run(emulator, (1, 8, 5, 5), 16, 8, 21, 2, dtype)
    assert "pwconv_bn_act" in launch, launch
    monkeypatch.setenv("FASTDW_CUDA_EMULATE_ARCH", "90")
    launch = run(emulator, (1, 8, 5, 5), 16, 8, 21, 2, dtype)
    assert launch.startswith(fused_kernel(dtype)), launch


# (shape, hidden or None, C_out, k, stride, residual, squeeze, se_act, se_gate): several tiles
# per image (the pooled sums add tiles, partial ones included), two images, hidden chunks.
SE_CASES = [
    pytest.param((2, 16, 11, 9), 40, 16, 3, 1, True, 10, "relu", "hardsigmoid",
                 id="k3-s1-expand-residual-relu-hardsigmoid"),
    pytest.param((1, 36, 17, 9), None, 70, 5, 2, False, 8, "silu", "sigmoid",
                 id="k5-s2-no-expand-silu-sigmoid"),
]


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, hidden, c_out, k, stride, residual, squeeze, se_act, se_gate",
                         SE_CASES)
def test_squeeze_excite(emulator, shape, hidden, c_out, k, stride, residual, squeeze, se_act,
                        se_gate, dtype):
    launch = run(emulator, shape, hidden, c_out, k, stride, dtype, residual=residual,
                 squeeze=squeeze, se_act=se_act, se_gate=se_gate)
    assert launch.startswith(se_kernel(dtype)), launch


@pytest.mark.usefixtures("poisoned_outputs")
def test_squeeze_excite_is_deterministic(emulator, monkeypatch):
    """The pooled sums add in a fixed order whatever order the emulator runs the threads and
    blocks in: two runs with different seeds agree bit for bit."""
    x, block, _ = make((1, 8, 17, 9), 40, 8, 3, torch.float32, squeeze=6)
    runs = []
    for seed in ("1", "2"):
        monkeypatch.setenv("FASTDW_CUDA_EMULATE_SEED", seed)
        runs.append(cuda.inverted_residual(x, block, 1, "relu6", True, "relu", "sigmoid"))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.usefixtures("poisoned_outputs")
def test_squeeze_excite_race_free_and_in_stages(emulator, monkeypatch):
    """Both kernels under the race detector; and a window over the shared-memory limit, whose
    depthwise output comes from the building blocks, then the gate and project kernel."""
    monkeypatch.setenv("FASTDW_CUDA_EMULATE_RACECHECK", "1")
    run(emulator, (1, 16, 9, 9), 40, 16, 3, 1, torch.float16, residual=True, squeeze=4)
    monkeypatch.delenv("FASTDW_CUDA_EMULATE_RACECHECK")
    launch = run(emulator, (1, 8, 5, 5), 16, 8, 21, 2, torch.float32, squeeze=4)
    assert launch.startswith(se_kernel(torch.float32)), launch


@pytest.mark.usefixtures("poisoned_outputs")
def test_squeeze_excite_gate_over_the_shared_memory_limit(emulator):
    """A squeeze-excite whose gate (4 bytes a hidden channel) exceeds sm_80's shared memory
    runs its second stage on ATen ops and the pwconv kernel, rather than being refused. (One
    pixel: the emulated fused kernel's time grows with hidden channels x pixels.)"""
    launch = run(emulator, (1, 42000, 1, 1), None, 4, 1, 1, torch.bfloat16, squeeze=8)
    assert "pwconv_bn_act" in launch, launch


def test_nchw_runs_on_reference(emulator):
    x, block, (expand, dw, project, _) = make((1, 8, 5, 5), 16, 8, 3, torch.float32)
    x = x.contiguous()
    y = cuda.inverted_residual(x, block, 1, "relu6", True, "relu", "hardsigmoid")
    assert y.is_contiguous()
    ref = oracle.inverted_residual(x, expand, dw, project, None, 1, "relu6", True)
    assert_matches_oracle(y, ref, x, "reference")


def _arguments():
    x, block, _ = make((1, 4, 5, 5), 8, 4, 3, torch.float32)
    return dict(x=x, weights=list(block), stride=1, act="relu", residual=True, se_act="relu",
                se_gate="hardsigmoid")


def weight(name, value):
    """A change of _arguments(): the block's tensor `name` replaced by `value`."""
    index = BlockWeights._fields.index(name)
    return lambda a: a["weights"].__setitem__(index, value)


def squeeze_excite(**wrong):
    """A change of _arguments(): a squeeze-excite of 2 channels, with the tensors in `wrong`."""
    tensors = {**dict(se_w1=torch.randn(2, 8), se_b1=torch.rand(2), se_w2=torch.randn(8, 2),
                      se_b2=torch.rand(8)), **wrong}
    changes = [weight(name, value) for name, value in tensors.items()]
    return lambda a: [change(a) for change in changes]


def option(**values):
    return lambda a: a.update(values)


BAD = [
    (lambda a: a["weights"].pop(), "weights must have 13 entries"),
    (weight("dw_w", None), r"dw_w is required \(weights\[3\]\)"),
    (option(x=torch.randn(1, 4, 5, 5, dtype=torch.float64)), "x must be float32, float16 or"),
    (option(x=torch.randn(1, 4, 5, 5)), "x must have channel stride 1"),
    (weight("expand_w", torch.randn(8, 5)), r"expand_w must be \(rows, 4\)"),
    (weight("expand_w", torch.randn(8, 4).half()), "expand_w must have x's dtype"),
    (weight("expand_scale", None), "expand_scale must be a tensor of shape"),
    (weight("expand_w", None), "expand_scale and expand_shift must be None without expand_w"),
    (weight("dw_w", torch.randn(8, 1, 4, 4)), "with k odd"),
    (weight("dw_scale", torch.rand(7)), r"dw_scale must have shape \(8\)"),
    (weight("project_w", torch.randn(4, 9)), r"project_w must be \(rows, 8\)"),
    (weight("project_shift", torch.ones(4, dtype=torch.int32)), "project_shift must be a float"),
    (weight("se_w1", torch.randn(2, 8)), "needs all of se_w1, se_b1, se_w2, se_b2, or none"),
    (squeeze_excite(se_w1=torch.randn(2, 7)), r"se_w1 must be \(squeeze, 8\)"),
    (squeeze_excite(se_b1=torch.rand(3)), r"se_b1 must have shape \(2\)"),
    (squeeze_excite(se_w2=torch.randn(8, 3)), r"se_w2 must be \(8, 2\)"),
    (squeeze_excite(se_b2=torch.rand(2, 4)), r"se_b2 must have shape \(8\)"),
    (option(stride=2), "residual needs stride 1"),
    (option(stride=0, residual=False), r"stride must be in \[1, "),
    (option(act="gelu"), "act must be one of"),
    (option(se_gate="relu"), "se_gate must be one of hardsigmoid, sigmoid"),
]


@pytest.mark.parametrize("change, message", BAD, ids=[m for _, m in BAD])
def test_bad_arguments_are_named(emulator, change, message):
    """The C++ op checks every argument before a launch, naming it."""
    args = _arguments()
    change(args)
    with pytest.raises(RuntimeError, match=message):
        emulator.inverted_residual(*args.values())


def block_gradients(shape, hidden, c_out, k, stride, dtype, act, residual, squeeze=None,
                    se_act="relu"):
    """(arguments, the backend's gradients as [x, *block], float64 autograd's)."""
    x, block, (expand, dw, project, se) = make(shape, hidden, c_out, k, dtype, squeeze)
    leaves = [None if t is None else t.double().requires_grad_() for t in (x, *block)]
    lx, lb = leaves[0], BlockWeights(*leaves[1:])

    def triple(*names):
        return tuple(getattr(lb, n) for n in names)
    y = oracle.inverted_residual(
        lx, None if expand is None else triple("expand_w", "expand_scale", "expand_shift"),
        triple("dw_w", "dw_scale", "dw_shift"),
        triple("project_w", "project_scale", "project_shift"),
        None if se is None else triple("se_w1", "se_b1", "se_w2", "se_b2"), stride, act,
        residual, se_act)
    grad = torch.randn(y.shape).to(dtype).to(memory_format=torch.channels_last)
    present = [t for t in leaves if t is not None]
    ref = torch.autograd.grad(y, present, grad.double())
    args = (grad, x, block, stride, act, residual, se_act, "hardsigmoid")
    gx, gblock = cuda.inverted_residual_backward(*args)
    got = [gx, *(g for g, t in zip(gblock, block) if t is not None)]
    return args, got, ref


# (shape, hidden or None, C_out, k, stride, act, residual)
BACKWARD_CASES = [
    pytest.param((1, 8, 6, 5), 24, 8, 3, 1, "relu6", True, id="expand-residual"),
    pytest.param((1, 12, 7, 6), None, 10, 5, 2, "hardswish", False, id="no-expand-s2"),
]


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, hidden, c_out, k, stride, act, residual", BACKWARD_CASES)
def test_backward_matches_float64(emulator, shape, hidden, c_out, k, stride, act, residual,
                                  dtype):
    """The backward composed of the building blocks' kernels (in float32): every gradient
    within the dtype's bound, x's in x's dtype and layout."""
    _, got, ref = block_gradients(shape, hidden, c_out, k, stride, dtype, act, residual)
    assert "dw_backward_sum" in emulator.last_launch()  # the expand's or depthwise's backward
    assert got[0].dtype == dtype and got[0].is_contiguous(memory_format=torch.channels_last)
    for i, (g, r) in enumerate(zip(got, ref)):
        assert g.shape == r.shape, i
        assert numerics.rel_err(g, r) < numerics.REL_TOL[dtype], f"gradient {i}"


@pytest.mark.usefixtures("poisoned_outputs")
def test_backward_is_deterministic(emulator, monkeypatch):
    monkeypatch.setenv("FASTDW_CUDA_EMULATE_SEED", "3")
    args, first, _ = block_gradients((1, 8, 6, 5), 24, 8, 3, 1, torch.float16, "silu", True)
    monkeypatch.setenv("FASTDW_CUDA_EMULATE_SEED", "4")
    gx, gblock = cuda.inverted_residual_backward(*args)
    second = [gx, *(g for g in gblock if g is not None)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_backward_with_squeeze_excite_matches_float64(emulator, dtype, monkeypatch):
    """A squeeze-excite block's backward: the stages on the kernels, the squeeze-excite's
    vectors and gate on stock ops between them (a silu inner activation: a relu could zero the
    squeeze weights' gradient), not reference's whole-block backward."""
    monkeypatch.setattr(reference, "inverted_residual_backward", None)
    _, got, ref = block_gradients((1, 4, 5, 5), 8, 4, 3, 1, dtype, "relu", True,
                                  squeeze=2, se_act="silu")
    assert "dw_backward_sum" in emulator.last_launch()
    assert len(got) == len(ref) == 14  # x and every weight, the squeeze-excite's included
    for i, (g, r) in enumerate(zip(got, ref)):
        assert numerics.rel_err(g, r) < numerics.REL_TOL[dtype], f"gradient {i}"
