"""Triton-backend checks the shared op matrix (tests/ops) does not make: the backward kernels of
dwconv_bn_act against float64 autograd in float32 (the matrix's float64 gradcheck runs on
reference, since this backend hands float64 to reference), both inverted-residual paths (fused,
and split with the SE gate prologue), which calls are handed to reference, and that every
output element is written (outputs and scratch buffers are allocated NaN-poisoned).

Under TRITON_INTERPRET=1 (no GPU) two interpreter artefacts of Triton 3.8 shape the bf16 cases:
tl.dot on bf16 operands is wrong, so the kernels multiply bf16 as fp32 there (on a GPU bf16 goes
to the tensor cores); and fp32 -> bf16 stores truncate instead of rounding to nearest, so bf16
errors run ~4x larger than on a GPU (still under the bf16 bound).
"""
import importlib
import math

import pytest
import torch

from numerics import REL_TOL, rel_err

kernels = pytest.importorskip("fastdw.kernels.triton", reason="needs triton installed")
from fastdw import backend, ops  # noqa: E402
from fastdw.contract import ACTIVATIONS, BlockWeights  # noqa: E402
from fastdw.kernels import reference  # noqa: E402
# By module path: the package attribute of this name is the kernel function.
ir_module = importlib.import_module("fastdw.kernels.triton.inverted_residual")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE not in kernels.DEVICES:
    pytest.skip("the triton backend needs a CUDA device or TRITON_INTERPRET=1",
                allow_module_level=True)

ACTS = tuple(ACTIVATIONS)  # every act name of the op contract
DEFAULT_SE = ("relu", "hardsigmoid")  # the squeeze-excite's (se_act, se_gate): MobileNetV3's


# Every float tensor the kernels' launchers allocate starts as NaN (tests/triton/conftest.py).
pytestmark = pytest.mark.usefixtures("poisoned")


def layout(x, name):
    if name == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if name == "strided":  # non-contiguous: every other column of a wider map
        return torch.cat([x, x], dim=-1)[..., ::2]
    return x


def dw_inputs(c, h, w, k, dtype, lay, n=2):
    x = layout(torch.randn(n, c, h, w, device=DEVICE).to(dtype), lay)
    weight = (torch.randn(c, 1, k, k, device=DEVICE) / k).to(dtype)
    scale = torch.empty(c, device=DEVICE).uniform_(0.5, 1.5)
    shift = torch.empty(c, device=DEVICE).uniform_(-0.5, 0.5)
    return x, weight, scale, shift


def as64(*tensors):
    """The arguments in float64 (a BlockWeights entry by entry)."""
    return [BlockWeights._make(as64(*t)) if isinstance(t, BlockWeights)
            else t.double() if isinstance(t, torch.Tensor) else t for t in tensors]


# (C, H, W, k, stride, padding, dilation, act, layout): every act, k 3/5/7, stride and dilation 2,
# padding 0 and asymmetric output sizes, every layout.
DW_GRAD_CASES = [
    (24, 13, 11, 3, 1, 1, 1, "relu6", "channels_last"),
    (20, 9, 14, 5, 2, 2, 1, "hardswish", "nchw"),
    (16, 10, 10, 3, 2, 2, 2, "silu", "strided"),
    (40, 8, 9, 7, 1, 3, 1, "hardsigmoid", "channels_last"),
    (12, 11, 7, 3, 2, 0, 1, "relu", "channels_last"),
    (33, 6, 6, 5, 1, 4, 2, "none", "nchw"),
]


@pytest.mark.parametrize("case", DW_GRAD_CASES,
                         ids=lambda c: f"c{c[0]}-k{c[3]}-s{c[4]}-d{c[6]}-{c[7]}-{c[8]}")
def test_dwconv_backward_fp32_vs_float64_autograd(case):
    c, h, w, k, stride, padding, dilation, act, lay = case
    x, weight, scale, shift = dw_inputs(c, h, w, k, torch.float32, lay)
    out = kernels.dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act)
    grad = torch.randn(out.shape, device=DEVICE)
    grads = kernels.dwconv_bn_act_backward(grad, x, weight, scale, shift, stride, padding,
                                           dilation, act)
    refs = reference.dwconv_bn_act_backward(grad.double(), *as64(x, weight, scale, shift),
                                            stride, padding, dilation, act)
    for name, g, r in zip(("x", "weight", "scale", "shift"), grads, refs):
        assert g.shape == r.shape, name
        assert rel_err(g, r) < REL_TOL[torch.float32], f"grad {name}"
    assert grads[0].is_contiguous(memory_format=torch.channels_last) == (lay == "channels_last")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_dwconv_backward_half_vs_float64_autograd(dtype):
    x, weight, scale, shift = dw_inputs(32, 12, 12, 3, dtype, "channels_last")
    grad = torch.randn(2, 32, 6, 6, device=DEVICE).to(dtype)
    grads = kernels.dwconv_bn_act_backward(grad, x, weight, scale, shift, 2, 1, 1, "hardswish")
    refs = reference.dwconv_bn_act_backward(grad.double(), *as64(x, weight, scale, shift),
                                            2, 1, 1, "hardswish")
    for name, g, r in zip(("x", "weight", "scale", "shift"), grads, refs):
        assert rel_err(g, r) < REL_TOL[dtype], f"grad {name}"


@pytest.mark.parametrize("act", ACTS)
def test_dwconv_training_step_through_public_op(act):
    """Autograd through fastdw.ops on the triton backend: the op layer's backward runs these
    kernels and gives the same gradients as float64 stock PyTorch."""
    x, weight, scale, shift = dw_inputs(24, 10, 10, 3, torch.float32, "channels_last", n=1)
    leaves = [t.clone().requires_grad_() for t in (x, weight, scale, shift)]
    ops.dwconv_bn_act(*leaves, act=act, backend="triton").square().sum().backward()
    ref_leaves = [t.double().requires_grad_() for t in (x, weight, scale, shift)]
    reference.dwconv_bn_act(*ref_leaves, 1, 1, 1, act).square().sum().backward()
    for leaf, ref in zip(leaves, ref_leaves):
        assert rel_err(leaf.grad, ref.grad) < REL_TOL[torch.float32]


def block(c_in, hidden, c_out, k, dtype, lay, se, n=1, h=10, w=10):
    """x and the BlockWeights entries of a block, by stage (hidden None: no expansion; se
    false: no squeeze-excite)."""
    def affine(ch):
        return (torch.empty(ch, device=DEVICE).uniform_(0.5, 1.5),
                torch.empty(ch, device=DEVICE).uniform_(-0.5, 0.5))

    def weight(*shape):
        return (torch.randn(*shape, device=DEVICE) / math.sqrt(math.prod(shape[1:]))).to(dtype)

    x = layout(torch.randn(n, c_in, h, w, device=DEVICE).to(dtype), lay)
    expand = (None, None, None) if hidden is None else (weight(hidden, c_in), *affine(hidden))
    hidden = hidden or c_in
    dw = (weight(hidden, 1, k, k), *affine(hidden))
    project = (weight(c_out, hidden), *affine(c_out))
    squeeze = max(8, hidden // 4)
    se_args = (weight(squeeze, hidden), torch.randn(squeeze, device=DEVICE).to(dtype) * 0.1,
               weight(hidden, squeeze), torch.randn(hidden, device=DEVICE).to(dtype) * 0.1) \
        if se else (None,) * 4
    return x, expand, dw, project, se_args


# (C_in, hidden, C_out, k, stride, act, SE (se_act, se_gate) or None, H, W, split expected):
# fused blocks (C_out <= 128, no SE) and split ones (SE, MobileNetV3's or EfficientNet's, or
# C_out > 128), with and without expansion, residual, stride 2.
IR_CASES = [
    (24, 144, 24, 3, 1, "relu6", None, 10, 10, False),
    (16, 96, 24, 3, 2, "relu6", None, 9, 11, False),
    (32, None, 16, 3, 1, "relu6", None, 8, 8, False),
    (40, 120, 40, 5, 1, "hardswish", DEFAULT_SE, 7, 7, True),
    (16, None, 16, 3, 2, "relu", ("silu", "sigmoid"), 12, 12, True),
    (64, 192, 160, 3, 1, "silu", None, 6, 5, True),
]


def ir_case_id(case):
    se = "-".join(case[6]) if case[6] else "no-se"
    return "-".join(map(str, (*case[:6], se)))


@pytest.mark.parametrize("dtype,lay", [(torch.float32, "nchw"), (torch.float32, "channels_last"),
                                       (torch.float32, "strided"),
                                       (torch.float16, "channels_last"),
                                       (torch.bfloat16, "channels_last")],
                         ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("case", IR_CASES, ids=ir_case_id)
def test_inverted_residual_paths(case, dtype, lay, monkeypatch):
    c_in, hidden, c_out, k, stride, act, se, h, w, split = case
    x, expand, dw, project, se_args = block(c_in, hidden, c_out, k, dtype, lay, se, h=h, w=w)
    residual = stride == 1 and c_in == c_out
    calls = []
    project_gemm = ir_module.pw_forward
    monkeypatch.setattr(ir_module, "pw_forward", lambda *a, **kw: calls.append(1) or
                        project_gemm(*a, **kw))
    args = (x, BlockWeights(*expand, *dw, *project, *se_args), stride, act, residual,
            *(se or DEFAULT_SE))
    out = kernels.inverted_residual(*args)
    assert bool(calls) == split, "fused/split path"
    ref = reference.inverted_residual(*as64(*args))
    assert rel_err(out, ref) < REL_TOL[dtype]
    assert out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last) == (lay == "channels_last")


def test_pwconv_residual_and_layouts():
    x = torch.randn(2, 40, 7, 9, device=DEVICE).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(48, 40, device=DEVICE) / 40 ** 0.5
    scale, shift = torch.rand(48, device=DEVICE) + 0.5, torch.randn(48, device=DEVICE)
    residual = torch.randn(2, 48, 7, 9, device=DEVICE)  # NCHW while x is channels_last
    out = kernels.pwconv_bn_act(x, weight, scale, shift, "hardswish", residual)
    ref = reference.pwconv_bn_act(*as64(x, weight, scale, shift), "hardswish", residual.double())
    assert rel_err(out, ref) < REL_TOL[torch.float32]
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_calls_the_kernels_do_not_take_go_to_reference(monkeypatch):
    """float64 and channel multiplier > 1 (see NOTES) return reference's exact result."""
    assert "float64" in kernels.NOTES and "multiplier" in kernels.NOTES
    x, weight, scale, shift = dw_inputs(8, 6, 6, 3, torch.float64, "nchw")
    out = kernels.dwconv_bn_act(x, weight, scale, shift, 1, 1, 1, "relu")
    assert torch.equal(out, reference.dwconv_bn_act(x, weight, scale, shift, 1, 1, 1, "relu"))
    x, _, _, _ = dw_inputs(8, 6, 6, 3, torch.float32, "nchw")
    weight = torch.randn(16, 1, 3, 3, device=DEVICE)
    scale, shift = torch.ones(16, device=DEVICE), torch.zeros(16, device=DEVICE)
    out = kernels.dwconv_bn_act(x, weight, scale, shift, 1, 1, 1, "relu")
    assert torch.equal(out, reference.dwconv_bn_act(x, weight, scale, shift, 1, 1, 1, "relu"))


def test_backend_is_listed_for_cpu_under_the_interpreter():
    row = backend.info()["triton"]
    assert row["usable"] and DEVICE in row["devices"]


# The inverted-residual kernel expands each pixel of a tile's window (tile + halo) once per
# hidden chunk into scratch and reads the k*k taps from there. Small forced tiles put tiles at
# every image border and between tiles, which the interpreter's default one-tile config does not.
SMALL_TILE = (4, 4, 16, 32, 16, 4)  # (BLOCK_OH, BLOCK_OW, BLOCK_CIN, BLOCK_HID, BLOCK_COUT, warps)


def expand_padded_wrongly(x, expand, dw, project, stride, act, residual):
    """The block with the depthwise stage padding by expand(0) = act(eb) instead of zeros: what a
    kernel computes if it expands padded input pixels instead of zeroing them afterwards."""
    pad = (dw[0].shape[-1] - 1) // 2
    h = reference._pw(torch.nn.functional.pad(x, [pad] * 4), *expand, act)
    h = reference._dw(h, *dw, stride, 0, 1, act)
    y = reference._pw(h, *project, "none")
    return y + x if residual else y


# (C_in, hidden, C_out, k, stride, act, SE, H, W): fused k=3 s=1 with residual, fused k=5 s=2,
# split (SE) k=3 s=2; odd sizes so the last tiles are partial.
BORDER_CASES = [
    (16, 64, 16, 3, 1, "relu6", False, 10, 9),
    (16, 48, 16, 5, 2, "hardswish", False, 11, 10),
    (16, 64, 24, 3, 2, "relu", True, 9, 11),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", BORDER_CASES, ids=lambda c: "-".join(map(str, c[:7])))
def test_inverted_residual_zero_pads_the_expanded_map_at_tile_borders(case, dtype, monkeypatch):
    """A large expand shift makes act(eb) far from 0, so border tiles that padded with
    expand(0) instead of 0 would miss the float64 oracle by far more than the tolerance."""
    c_in, hidden, c_out, k, stride, act, se, h, w = case
    monkeypatch.setattr(ir_module, "pick_config", lambda *a: SMALL_TILE)
    x, (we, es, eb), dw, project, se_args = block(c_in, hidden, c_out, k, dtype, "nchw", se,
                                                  n=2, h=h, w=w)
    expand = (we, es, eb + 2.0)
    residual = stride == 1 and c_in == c_out
    args = (x, BlockWeights(*expand, *dw, *project, *se_args), stride, act, residual,
            *DEFAULT_SE)
    out = kernels.inverted_residual(*args)
    ref = reference.inverted_residual(*as64(*args))
    assert rel_err(out, ref) < REL_TOL[dtype]
    if not se:  # the wrong padding is far off: the test can see it
        wrong = expand_padded_wrongly(*as64(x, expand, dw, project), stride, act, residual)
        assert rel_err(wrong, ref) > 100 * REL_TOL[dtype]


@pytest.mark.parametrize("case", BORDER_CASES, ids=lambda c: "-".join(map(str, c[:7])))
def test_inverted_residual_expands_each_window_pixel_once(case, monkeypatch):
    """Counts the expand tl.dot work the interpreter runs: per program and hidden chunk exactly
    the tile's window, HALO_H x HALO_W = ((BLOCK_OH-1)*S+K) x ((BLOCK_OW-1)*S+K) pixels in whole
    BLOCK_P steps (not k*k * BLOCK_P, as when each tap recomputed its expansion)."""
    from triton.runtime.interpreter import InterpreterBuilder
    c_in, hidden, c_out, k, stride, act, se, h, w = case
    monkeypatch.setattr(ir_module, "pick_config", lambda *a: SMALL_TILE)
    block_oh, block_ow, block_cin, block_hid, _, _ = SMALL_TILE
    expand_rows = []
    create_dot = InterpreterBuilder.create_dot

    def counting_dot(self, a, b, *rest):
        if b.data.shape == (block_cin, block_hid):  # the expand GEMM step
            expand_rows.append(a.data.shape[0])
        return create_dot(self, a, b, *rest)

    monkeypatch.setattr(InterpreterBuilder, "create_dot", counting_dot)
    n = 2
    x, expand, dw, project, se_args = block(c_in, hidden, c_out, k, torch.float32, "nchw", se,
                                            n=n, h=h, w=w)
    residual = stride == 1 and c_in == c_out
    args = (x, BlockWeights(*expand, *dw, *project, *se_args), stride, act, residual,
            *DEFAULT_SE)
    out = kernels.inverted_residual(*args)
    assert rel_err(out, reference.inverted_residual(*as64(*args))) < REL_TOL[torch.float32]

    oh, ow = ((s + 2 * ((k - 1) // 2) - k) // stride + 1 for s in (h, w))
    tiles = n * math.ceil(oh / block_oh) * math.ceil(ow / block_ow)
    chunks = math.ceil(hidden / block_hid)
    block_p = block_oh * block_ow
    halo = ir_module.halo_pixels(k, stride, block_oh, block_ow)
    assert halo == ((block_oh - 1) * stride + k) * ((block_ow - 1) * stride + k)
    steps = math.ceil(halo / block_p)  # expand steps per program and chunk
    assert set(expand_rows) == {block_p}
    assert len(expand_rows) == tiles * chunks * steps * math.ceil(c_in / block_cin)
    assert steps * block_p < halo + block_p  # no window pixel is expanded twice
    assert steps < k * k  # the per-tap recompute took k*k steps
    row = chunks * block_hid if not se else block_hid  # fused: every chunk; split: one
    assert ir_module.scratch_row(hidden, block_hid, not se) == row
    assert ir_module.scratch_region(k, stride, block_oh, block_ow, row) == steps * block_p * row


@pytest.mark.parametrize("se", [False, True], ids=["fused", "split-se"])
def test_inverted_residual_programs_loop_within_the_scratch_budget(se, monkeypatch):
    """Off a GPU the launch holds the programs SCRATCH_BUDGET allows, each looping over every
    P-th tile (PERSISTENT): a budget below one region launches one program per hidden chunk that
    takes every tile of every image in turn, reusing its scratch (and, with SE, writing each
    tile's sums to its own row)."""
    monkeypatch.setattr(ir_module, "pick_config", lambda *a: SMALL_TILE)
    monkeypatch.setattr(ir_module, "SCRATCH_BUDGET", 1)
    launches = []
    kernel = ir_module.ir_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    monkeypatch.setattr(ir_module, "ir_kernel", Counting())
    n = 3
    x, expand, dw, project, se_args = block(16, 64, 16, 3, torch.float32, "channels_last", se,
                                            n=n, h=9, w=8)
    args = (x, BlockWeights(*expand, *dw, *project, *se_args), 1, "hardswish", True,
            *DEFAULT_SE)
    out = kernels.inverted_residual(*args)
    assert rel_err(out, reference.inverted_residual(*as64(*args))) < REL_TOL[torch.float32]
    assert launches == [(1, 1 if not se else math.ceil(64 / 32))]
