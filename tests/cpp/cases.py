"""Correctness cases of the raw C++ kernels (torch.ops.fastdw_cpp.*) against
fastdw.kernels.reference evaluated in float64, shared by the in-process tests, the per-ISA
subprocess runs and the AddressSanitizer run.

    python tests/cpp/cases.py [--library SO]     # exit status 1 on any failure

Outputs are poisoned: with torch.utils.deterministic.fill_uninitialized_memory and deterministic
algorithms on, every at::empty the kernels allocate is filled with NaN, so an element a kernel
forgets to write fails the comparison. Shapes are small (sanitizer runs are ~10x slower) but
cover every template path: k 3/5 with stride 1/2, the runtime-k path (k 1, 7, stride 3,
dilation 2), channel tails (C not a multiple of 16 or 8), 1-pixel images, every activation,
NCHW / channels_last / strided inputs, fp32 and bf16, weights reused (cached packs) and then
edited in place, inverted-residual blocks streamed in many row groups and in bands, with each
squeeze-excite inner activation (relu, silu) and gate (hardsigmoid, sigmoid),
programs (torch.classes.fastdw_cpp.Program) chaining every kind of step, and their conv step
(the stem) alone.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

from fastdw.contract import ACTIVATIONS, BlockWeights
from fastdw.kernels import reference

# Also run as a script and from the sanitizer's subprocess, where pytest has not put tests/ on
# sys.path: the one tolerance table lives in tests/numerics.py.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from numerics import REL_TOL  # noqa: E402
ACTS = tuple(ACTIVATIONS)  # every act name of the op contract


def layout(x, name):
    if name == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if name == "strided":  # channel stride 1 but non-dense rows and columns
        big = torch.randn(x.shape[0], x.shape[1], 2 * x.shape[2], 3 * x.shape[3], dtype=x.dtype)
        big = big.contiguous(memory_format=torch.channels_last)
        view = big[:, :, ::2, ::3]
        view.copy_(x)
        return view
    if name == "transposed":  # no unit stride anywhere the kernel wants it
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    return x


def f64(t):
    return None if t is None else t.double()


def f64_block(weights):
    """The reference's BlockWeights, in float64, of a kernel's weights list."""
    return BlockWeights(*map(f64, weights))


def rel_err(out, ref):
    if torch.isnan(out).any():
        return float("inf")
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def dw_cases():
    # (N, C, H, W, k, stride, dilation, act, layout, dtype)
    shapes = [(2, 32, 9, 11, 3, 1, 1), (1, 40, 10, 7, 3, 2, 1), (2, 24, 12, 12, 5, 1, 1),
              (1, 72, 11, 9, 5, 2, 1), (1, 19, 8, 8, 7, 1, 1), (2, 13, 9, 9, 3, 1, 2),
              (1, 5, 7, 8, 3, 3, 1), (2, 8, 5, 5, 1, 1, 1), (1, 17, 1, 1, 3, 1, 1),
              (1, 16, 3, 3, 5, 2, 1)]
    layouts = ("nchw", "channels_last", "strided", "transposed")
    for i, (n, c, h, w, k, s, d) in enumerate(shapes):
        for dtype in (torch.float32, torch.bfloat16):
            yield (n, c, h, w, k, s, d, ACTS[i % len(ACTS)], layouts[i % len(layouts)], dtype)


def run_dw(n, c, h, w, k, s, d, act, lay, dtype):
    x = layout(torch.randn(n, c, h, w).to(dtype), lay)
    weight = torch.randn(c, 1, k, k).to(dtype)
    scale, shift = torch.rand(c) + 0.5, torch.randn(c)
    pad = d * (k - 1) // 2
    out = torch.ops.fastdw_cpp.dwconv_bn_act(x, weight, scale, shift, s, pad, d, act)
    ref = reference.dwconv_bn_act(f64(x), f64(weight), f64(scale), f64(shift), s, pad, d, act)
    return out, ref, x


def pw_cases():
    for i, (n, cin, cout, h, w, res, lay) in enumerate(
            [(2, 16, 24, 5, 7, True, "channels_last"), (1, 37, 5, 4, 3, False, "nchw"),
             (2, 8, 8, 1, 1, True, "strided"), (1, 24, 40, 6, 6, False, "channels_last")]):
        yield (n, cin, cout, h, w, res, ACTS[i % len(ACTS)], lay)


def run_pw(n, cin, cout, h, w, res, act, lay):
    x = layout(torch.randn(n, cin, h, w), lay)
    weight = torch.randn(cout, cin) / cin ** 0.5
    scale, shift = torch.rand(cout) + 0.5, torch.randn(cout)
    r = torch.randn(n, cout, h, w) if res else None
    out = torch.ops.fastdw_cpp.pwconv_bn_act(x, weight, scale, shift, act, r)
    ref = reference.pwconv_bn_act(f64(x), f64(weight), f64(scale), f64(shift), act, f64(r))
    return out, ref, x


def ir_cases():
    # (N, C_in, hidden, C_out, H, W, k, stride, act, squeeze-excite, expand, layout[, reuse[,
    # se_act, se_gate]])
    yield (2, 16, 48, 16, 9, 7, 3, 1, "relu6", False, True, "channels_last")
    yield (1, 24, 72, 40, 11, 11, 5, 2, "relu", True, True, "nchw")
    yield (2, 40, 120, 40, 7, 6, 5, 1, "hardswish", True, True, "channels_last")
    yield (3, 16, 16, 16, 6, 6, 3, 1, "relu6", False, False, "strided")
    yield (1, 16, 16, 24, 9, 9, 3, 2, "relu", True, False, "channels_last")
    yield (1, 8, 24, 12, 1, 1, 3, 1, "hardswish", False, True, "nchw")
    yield (2, 24, 144, 24, 8, 8, 3, 1, "relu6", False, True, "channels_last", True)
    # Rows of h over 128 KiB: groups of one output row, so each group keeps the k - s rows it
    # shares with the previous one (stride 1 and 2, SE); 40 rows at batch 1: two bands.
    yield (1, 16, 576, 24, 9, 60, 3, 1, "relu6", False, True, "channels_last")
    yield (1, 16, 288, 24, 11, 120, 5, 2, "hardswish", False, True, "nchw")
    yield (1, 24, 480, 24, 8, 70, 5, 1, "hardswish", True, True, "channels_last")
    yield (1, 16, 288, 16, 40, 60, 3, 1, "relu6", False, True, "channels_last")
    # EfficientNet's SE (silu, sigmoid) and the mixed kinds; the gate scales d (6x6 = 36 pixels
    # <= C_out 40) or the project weights (7x6 = 42 > 24), batch 2 as whole units.
    yield (1, 24, 72, 40, 11, 11, 5, 2, "silu", True, True, "nchw", False, "silu", "sigmoid")
    yield (2, 24, 72, 24, 7, 6, 3, 1, "hardswish", True, True, "channels_last", False, "relu",
           "sigmoid")
    yield (1, 16, 16, 24, 9, 9, 3, 2, "silu", True, False, "strided", False, "silu",
           "hardsigmoid")


def run_ir(n, cin, hid, cout, h, w, k, s, act, se, expand, lay, reuse=False, se_act="relu",
           se_gate="hardsigmoid"):
    x = layout(torch.randn(n, cin, h, w), lay)
    hid = hid if expand else cin
    ew = torch.randn(hid, cin) / cin ** 0.5 if expand else None
    es, eb = (torch.rand(hid) + 0.5, torch.randn(hid)) if expand else (None, None)
    dw, ds, db = torch.randn(hid, 1, k, k) / k, torch.rand(hid) + 0.5, torch.randn(hid)
    pw, ps, pb = torch.randn(cout, hid) / hid ** 0.5, torch.rand(cout) + 0.5, torch.randn(cout)
    sq = max(4, hid // 4)
    sew = ([torch.randn(sq, hid) / hid ** 0.5, torch.randn(sq), torch.randn(hid, sq) / sq ** 0.5,
            torch.randn(hid)] if se else [None] * 4)
    res = s == 1 and cin == cout
    weights = [ew, es, eb, dw, ds, db, pw, ps, pb, *sew]
    options = (s, act, res, se_act, se_gate)
    out = torch.ops.fastdw_cpp.inverted_residual(x, weights, *options)
    if reuse:  # again with the same weight tensors, edited in place: cached packs are refreshed
        torch.ops.fastdw_cpp.inverted_residual(x, weights, *options)
        for t in (ew, dw, pw):
            if t is not None:
                t.mul_(-1.5)
        out = torch.ops.fastdw_cpp.inverted_residual(x, weights, *options)
    ref = reference.inverted_residual(f64(x), f64_block(weights), *options)
    return out, ref, x


def program_cases():
    # (N, H, W, layout, head, the block's SE (se_act, se_gate)): stem conv -> block -> dwconv ->
    # pwconv -> act [-> pool -> linear with act -> linear]
    yield (2, 13, 11, "nchw", False, ("relu", "hardsigmoid"))
    # the result is the last (in-place) act's
    yield (2, 12, 9, "channels_last", False, ("silu", "sigmoid"))
    yield (1, 9, 10, "channels_last", True, ("relu", "hardsigmoid"))
    yield (3, 8, 8, "strided", True, ("silu", "sigmoid"))


def run_program(n, h, w, lay, head, se_kind):
    x = layout(torch.randn(n, 3, h, w), lay)
    stem_w, stem_b = torch.randn(16, 3, 3, 3) / 5, torch.randn(16)
    block = [torch.randn(48, 16) / 4, torch.rand(48) + 0.5, torch.randn(48),
             torch.randn(48, 1, 5, 5) / 5, torch.rand(48) + 0.5, torch.randn(48),
             torch.randn(24, 48) / 7, torch.rand(24) + 0.5, torch.randn(24),
             torch.randn(12, 48) / 7, torch.randn(12), torch.randn(48, 12) / 4, torch.randn(48)]
    dw = [torch.randn(24, 1, 3, 3) / 3, torch.rand(24) + 0.5, torch.randn(24)]
    pw = [torch.randn(40, 24) / 5, torch.rand(40) + 0.5, torch.randn(40)]
    fc = [torch.randn(32, 40) / 6, torch.randn(32), torch.randn(10, 32) / 6, torch.randn(10)]
    program = torch.classes.fastdw_cpp.Program()
    program.add_conv(stem_w, stem_b, 2, 1, 1, 1, "hardswish")
    program.add_inverted_residual(block, 2, "relu", False, *se_kind)
    program.add_dwconv_bn_act(*dw, 1, 2, 2, "relu6")
    program.add_pwconv_bn_act(*pw, "none")
    program.add_act("silu")
    ref = F.hardswish(F.conv2d(f64(x), f64(stem_w), f64(stem_b), 2, 1))
    ref = reference.inverted_residual(ref, f64_block(block), 2, "relu", False, *se_kind)
    ref = reference.dwconv_bn_act(ref, *map(f64, dw), 1, 2, 2, "relu6")
    ref = F.silu(reference.pwconv_bn_act(ref, *map(f64, pw), "none", None))
    if head:
        program.add_global_avg_pool()
        program.add_linear(fc[0], fc[1], "hardswish")
        program.add_linear(fc[2], fc[3], "none")
        ref = F.linear(F.hardswish(F.linear(ref.mean((2, 3)), *map(f64, fc[:2]))),
                       *map(f64, fc[2:]))
    out = program.run(x)
    # A second run reuses the buffers the first one kept (csrc/cpu/output_arena.h): out must
    # not be one of them.
    program.run(layout(torch.randn(n, 3, h, w), lay))
    return out, ref, x


def conv_cases():
    # A program's conv step: (N, C_in, H, W, C_out, k, stride, padding, dilation, groups, act,
    # layout, steps). Groups 1 with few taps runs fastdw's direct kernel (csrc/cpu/conv_bias_act):
    # the stem shape, windows crossing every border, 1-pixel images (all border), padding past
    # the window, dilation, C_out over one panel, one tap (with a channels-last input, a
    # channels-last weight too); groups > 1 or a non-square window runs ATen's conv2d. steps 1:
    # the conv is the last step (its output is the result), 2: an act follows (the conv writes
    # into the arena).
    yield (2, 3, 13, 11, 16, 3, 2, 1, 1, 1, "hardswish", "nchw", 2)
    yield (1, 3, 12, 9, 32, 3, 2, 1, 1, 1, "relu6", "channels_last", 1)
    yield (3, 3, 1, 1, 16, 3, 2, 1, 1, 1, "relu", "strided", 2)
    yield (1, 4, 9, 10, 20, 5, 1, 2, 1, 1, "silu", "transposed", 1)
    yield (2, 3, 8, 8, 70, 3, 3, 4, 2, 1, "none", "nchw", 2)
    yield (1, 2, 6, 7, 8, 1, 1, 0, 1, 1, "hardsigmoid", "channels_last", 2)
    yield (1, 8, 7, 7, 16, 3, 1, 1, 1, 2, "relu6", "nchw", 2)
    yield (1, 3, 9, 8, 12, (3, 5), 1, 1, 1, 1, "relu", "nchw", 2)  # not square: ATen too


def run_conv(n, cin, h, w, cout, k, s, pad, d, groups, act, lay, steps):
    x = layout(torch.randn(n, cin, h, w), lay)
    kh, kw = k if isinstance(k, tuple) else (k, k)
    weight, bias = torch.randn(cout, cin // groups, kh, kw) / kh, torch.randn(cout)
    weight = layout(weight, "channels_last" if lay == "channels_last" else "nchw")
    program = torch.classes.fastdw_cpp.Program()
    program.add_conv(weight, bias, s, pad, d, groups, act)
    if steps == 2:
        program.add_act("none")
    ref = reference.ACTIVATIONS[act](F.conv2d(f64(x), f64(weight), f64(bias), s, pad, d, groups))
    out = program.run(x)
    program.run(layout(torch.randn(n, cin, h, w), lay))  # out must survive a second run
    return out, ref, x


def all_cases():
    """(label, runner, case) of every case."""
    for case in dw_cases():
        yield f"dwconv_bn_act{case}", run_dw, case
    for case in pw_cases():
        yield f"pwconv_bn_act{case}", run_pw, case
    for case in ir_cases():
        yield f"inverted_residual{case}", run_ir, case
    for case in program_cases():
        yield f"program{case}", run_program, case
    for case in conv_cases():
        yield f"conv{case}", run_conv, case


def check(runner, case):
    """None if the case passes, else what is wrong."""
    from fastdw.contract import output_memory_format
    torch.manual_seed(hash(case) % 2**31)
    out, ref, x = runner(*case)
    if out.dtype != x.dtype or out.shape != ref.shape:
        return f"dtype/shape {out.dtype} {tuple(out.shape)}, want {x.dtype} {tuple(ref.shape)}"
    fmt = output_memory_format(x) if out.dim() == 4 else torch.contiguous_format
    if not out.is_contiguous(memory_format=fmt):
        return f"output strides {out.stride()} are not {fmt}"
    err = rel_err(out, ref)
    return None if err < REL_TOL[x.dtype] else f"relative error {err:.3g}"


def poison_outputs():
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--library", help="load this build of the kernels instead of fastdw._C")
    args = parser.parse_args()
    if args.library:
        torch.ops.load_library(args.library)
    else:
        import fastdw._C  # noqa: F401
    poison_outputs()
    print("capability:", torch.ops.fastdw_cpp.capability())
    failures = 0
    for label, runner, case in all_cases():
        problem = check(runner, case)
        if problem:
            failures += 1
            print(f"FAIL {label}: {problem}")
    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
