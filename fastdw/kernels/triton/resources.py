"""Static resource check of every fastdw Triton kernel, no GPU needed.

    python -m fastdw.kernels.triton.resources [--full] [--worst] [--jobs N]

Compiles each kernel for each config its launcher can pick (GPU_CONFIGS of every module, every
dtype that config serves, the channel blocks of the inverted-residual kernel) for sm_80 and
sm_90 with triton.compile(ASTSource(...), target=GPUTarget("cuda", cap, 32)), then reads the
cubin with the cuobjdump shipped with Triton: registers, local memory (spills) and stack; shared
memory is Triton's own (dynamic) allocation from the compile metadata; the tensor-core operand
type (mma) is read from the PTX (mma.sync on sm_80, wgmma on sm_90). Exits non-zero on any
spill, any stack use, shared memory above the architecture's per-block limit, or a tl.dot kernel
whose fp16/bf16 variant does not multiply on tensor cores in its own dtype (this check is the
only place the GPU's bf16 tl.dot is seen: the interpreter multiplies bf16 as fp32), and prints
the table. Arguments are specialised the way a launch on a real tensor specialises them: pointers
16-byte aligned, channel strides of channels_last tensors == 1, channel counts multiples of 16.

Without --full the code-shape constexprs that do not change tile sizes (activation, stride,
dilation, kernel size) are fixed at their heaviest values (silu/hardswish, stride 2, k = 7 for
depthwise, 5 for blocks) instead of enumerated; --full enumerates them all (slow). Each config
is also compiled with int64 offsets within an image (INT64, the path for images of 2**31
elements or more); of the inverted-residual kernel only its widest fused and split configs per
dtype, as its int64 variants used exactly the registers of its int32 ones when all were compiled
(sm_80 and sm_90, the default shapes).

Each row also gives the occupancy the kernel would have on an A100 (sm_80) and an H100 (sm_90):
blocks resident per SM and the share of the SM's warp slots they fill, from its registers,
warps and shared memory; a summary gives each kernel's range.

The worst cases are compiled too: the fused block at stride 1 with the residual and k 7, and
channel counts that are not multiples of 16 (no divisibility hints: scalar loads in the tl.dot
kernels; every V3 width), each with the register cap its launcher passes (_shared.maxnreg).
--worst adds the unaligned cases that spill today (the fp32 1x1 kernel), which are therefore
not part of the CI check yet, and the unaligned bf16 tl.dot cases.
"""
import argparse
import concurrent.futures
import importlib
import itertools
import os
import re
import subprocess
import sys
import tempfile

import torch

# Max shared memory per block (opt-in), bytes.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
ARCHS = (80, 90)
# Per SM, for occupancy: shared memory at the largest carveout (A100 164 KB, H100 228 KB), of
# which the driver reserves 1 KB per block; 64K registers, allocated per warp in units of 256;
# at most 64 warps and 32 blocks (the same on sm_80 and sm_90).
SMEM_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
SMEM_RESERVED_PER_BLOCK = 1024
REGS_PER_SM, REG_UNIT, MAX_WARPS, MAX_BLOCKS = 65536, 256, 64, 32
GPUS = {80: "A100", 90: "H100"}
_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_ACTS = ("none", "relu", "relu6", "hardswish", "hardsigmoid", "silu")
_INDEX = {False: "", True: " int64"}  # config label suffix of the INT64 variants
_PRECISION = {"ieee": "", "tf32": " tf32"}  # and of the fp32 variants with TF32 allowed
# and of the block kernel's persistent variant, whose spills are no failure: its launcher picks
# it only where it does not spill (inverted_residual.launch_plan, from the GPU's compile)
_PERSISTENT = {False: "", True: " persistent"}
# Tensor-core instructions in the PTX, capturing their operand type.
_MMA = re.compile(r"\b(?:wgmma\.mma_async|mma)\.sync\.aligned\.[\w.]*?\.f32\.(bf16|f16|tf32)\b")
# The operand type each kernel's tensor-core instructions must have, by its x dtype: the
# tl.dot kernels multiply fp16/bf16 on tensor cores and fp32 in IEEE fp32 on CUDA cores, or as
# tf32 on tensor cores when TF32 is allowed (PRECISION "tf32"); the depthwise kernels never use
# them. "-": none.
_DOT_KERNELS = ("pw_kernel", "ir_kernel")
# Global loads in the PTX, capturing the vector width (".v2", ".v4") or none (a scalar load).
_LOAD = re.compile(r"\bld\.global(?:\.\w+)*?(\.v[248])?\.[busf]\d+\b")
_EXPECTED_MMA = {"fp32": "-", "fp16": "f16", "bf16": "bf16"}


def _cases(full, worst=False):
    """(kernel, config label, args {name: value}, constexprs, compile options).

    Argument values are only types and specialisation: a torch dtype for a pointer, an int for
    an int (1 and multiples of 16 specialise like at launch). A kernel with a VEC constexpr
    gets its channel count and row/column strides divided by VEC, as its launcher passes them;
    the 1x1 kernel its ints divided by VEC_K and VEC_N (pwconv_bn_act.vectorised).
    """
    from fastdw.kernels.triton._shared import vector_width, vectorised
    for fn, label, args, constexprs, options in _kernel_cases(full, worst):
        if "VEC" in fn.arg_names and fn.__name__ != "ir_kernel":
            vec_args = ["C"] + [name for name in args if name in _ROW_STRIDES]
            vec = vector_width(*(args[name] for name in vec_args))
            args = dict(args, **{name: args[name] // vec for name in vec_args})
            constexprs = dict(constexprs, VEC=vec)
        if "VEC_K" in fn.arg_names:  # the 1x1 kernel: a vector width on each side of the GEMM
            args, vecs = importlib.import_module(fn.__module__).vectorised(args)
            constexprs = dict(constexprs, **vecs)
        if fn.__name__ == "ir_kernel":  # VEC over the ints of VEC_ARGS, as its launcher
            args, vec = vectorised(args, importlib.import_module(fn.__module__).VEC_ARGS)
            constexprs = dict(constexprs, VEC=vec)
        yield fn, label, args, constexprs, options


# The row and column stride arguments of the kernels that take a VEC.
_ROW_STRIDES = {f"s{t}{d}" for t in ("x", "y", "g", "gx") for d in "hw"}


def _kernel_cases(full, worst):
    """_cases before the VEC division."""
    # By module path: the package's own attributes of these names are the kernel functions.
    dw, pw, ir = (importlib.import_module(f"fastdw.kernels.triton.{name}") for name in
                  ("dwconv_bn_act", "pwconv_bn_act", "inverted_residual"))

    f32 = torch.float32
    # dwconv: each tile config with the dtypes pick_config serves it for; the small maps'
    # configs with int32 offsets only (an image of 2**31 elements has more 8x8 tiles and
    # channel blocks than a GPU has SMs, so it never takes them).
    dw_cfgs = [(label + small, dt) for small in ("", "_small") for label, dt in
               [("narrow", dt) for dt in _DTYPES] + [("wide4", f32)] +
               [("wide2", dt) for dt in (torch.float16, torch.bfloat16)]]
    shapes = itertools.product((3, 5, 7), (1, 2), (1, 2), _ACTS) if full else \
        [(7, 2, 1, "silu")]
    for (label, dt), (k, stride, dil, act), int64 in itertools.product(dw_cfgs, shapes,
                                                                       (False, True)):
        if int64 and label.endswith("_small"):
            continue
        boh, bow, bc, warps = dw.GPU_CONFIGS[label]
        tile = dict(K=k, STRIDE=stride, DILATION=dil, BLOCK_OH=boh, BLOCK_OW=bow, BLOCK_C=bc,
                    INT64=int64)
        name = f"{label} {_DTYPES[dt]} k{k} s{stride} d{dil} {act}{_INDEX[int64]}"
        ints = dict(C=64, H=56, W=56, OH=56, OW=56, PAD=3, TILES_W=7, TILES_HW=49)
        x = dict(sxn=200704, sxc=1, sxh=3584, sxw=64)
        yield dw.dw_forward_kernel, name, dict(
            x_ptr=dt, w_ptr=dt, scale_ptr=f32, shift_ptr=f32, y_ptr=dt, **ints, **x,
            syn=200704, syc=1, syh=3584, syw=64), dict(tile, ACT=act), \
            dict(num_warps=warps, maxnreg=dw.MAXNREG)
        yield dw.dw_backward_params_kernel, name, dict(
            g_ptr=dt, x_ptr=dt, w_ptr=dt, scale_ptr=f32, shift_ptr=f32, gz_ptr=f32,
            partial_ptr=f32, **ints, sgn=200704, sgc=1, sgh=3584, sgw=64, **x), \
            dict(tile, ACT=act), dict(num_warps=warps)
        yield dw.dw_backward_input_kernel, name, dict(
            gz_ptr=f32, w_ptr=dt, gx_ptr=dt, **ints, sgxn=200704, sgxc=1, sgxh=3584,
            sgxw=64), tile, dict(num_warps=warps, maxnreg=dw.MAXNREG)

    # pwconv: every config x dtype, with gate and residual (its heaviest form).
    acts = _ACTS if full else ("hardswish",)
    for label, dt, act, int64, precision in itertools.product(pw.GPU_CONFIGS, _DTYPES, acts,
                                                              (False, True), _PRECISION):
        if precision == "tf32" and (dt != f32 or int64):  # TF32: fp32 only, int32 offsets
            continue
        bm, bn, bk, warps = pw.GPU_CONFIGS[label]
        strides = {f"s{t}{d}": v for t in "xry" for d, v in zip("nchw", (200704, 1, 3584, 64))}
        name = f"{label} {_DTYPES[dt]} {act}{_INDEX[int64]}{_PRECISION[precision]}"
        yield pw.pw_kernel, name, dict(
            x_ptr=dt, w_ptr=dt, scale_ptr=f32, shift_ptr=f32, gate_ptr=f32, res_ptr=dt, y_ptr=dt,
            M=3136, HW=3136, W=56, C_IN=64, C_OUT=64, **strides), dict(
            ACT=act, HAS_GATE=True, HAS_RES=True, DOT_FP32=False, PRECISION=precision,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, INT64=int64), \
            _dot_options(warps, dt, C_IN=64, C_OUT=64, **strides)

    # inverted residual: every channel block the launcher can pick, fused and split.
    shapes = itertools.product((3, 5, 7), (1, 2), _ACTS, (True, False)) if full else \
        [(5, 2, "hardswish", True)]
    for dt, (k, stride, act, expand) in itertools.product(_DTYPES, shapes):
        cin_blocks = [b for b in (16, 32, 64) if b <= ir.GPU_MAX_BLOCK_CIN[dt.itemsize]]
        widest = cin_blocks[-1]
        modes = [(bcin, bcout, True, False, "ieee", False) for bcin in cin_blocks
                 for bcout in (16, 32, 64, 128)]
        modes += [(bcin, 16, False, False, "ieee", False) for bcin in cin_blocks]
        # int64 offsets, and the persistent variant (launch_plan): widest blocks
        modes += [(widest, bcout, bcout == 128, int64, "ieee", not int64)
                  for int64 in (True, False) for bcout in (128, 16)]
        if dt == f32:  # TF32 allowed, widest blocks
            modes += [(widest, 128, True, False, "tf32", False),
                      (widest, 16, False, False, "tf32", False)]
        for bcin, bcout, fused, int64, precision, persistent in modes:
            name = (f"{'fused' if fused else 'split'} {_DTYPES[dt]} cin{bcin} cout{bcout} k{k} "
                    f"s{stride} {act}{'' if expand else ' no-expand'}{_INDEX[int64]}"
                    f"{_PRECISION[precision]}{_PERSISTENT[persistent]}")
            yield _ir_case(ir, name, dt, 64, 384, 64, 56, k, stride, act, fused, bcin, bcout,
                           expand=expand, residual=fused and stride == 1, int64=int64,
                           precision=precision, persistent=persistent)
    yield from _worst_cases(dw, pw, ir, worst)


def _dot_options(warps, dt, **ints):
    """Compile options of a tl.dot kernel: the register cap its launcher passes for x of dtype
    dt and these channel counts and strides (_shared.maxnreg)."""
    from fastdw.kernels.triton._shared import maxnreg
    return dict(num_warps=warps, maxnreg=maxnreg(dt.itemsize, *ints.values()))



def _ir_case(ir, name, dt, c_in, hidden, c_out, size, k, stride, act, fused, bcin, bcout,
             expand=True, residual=False, int64=False, precision="ieee", persistent=False):
    """One inverted-residual kernel case: a channels_last size x size input of c_in channels,
    the GPU tile (GPU_CONFIG), these channel blocks, fused (PROJECT, into a channels_last
    output) or split (the hidden tensor and per-tile SE sums), with its launcher's register
    cap and vector width (_cases applies VEC)."""
    f32 = torch.float32
    boh, bow, bh, warps = ir.GPU_CONFIG
    pad, out = (k - 1) // 2, (size - 1) // stride + 1
    tiles_w = -(-out // bow)
    tiles_hw = -(-out // boh) * tiles_w
    row = -(-hidden // bh) * bh
    strides = {f"sx{d}": v for d, v in zip("nchw", (size * size * c_in, 1, size * c_in, c_in))}
    strides.update({f"sy{d}": v for d, v in zip("nchw", (out * out * c_out, 1, out * c_out,
                                                         c_out))})
    args = dict(x_ptr=dt, we_ptr=dt, es_ptr=f32, eb_ptr=f32, wd_ptr=dt, ds_ptr=f32, db_ptr=f32,
                wp_ptr=dt, ps_ptr=f32, pb_ptr=f32, hid_ptr=dt, scratch_ptr=dt, pool_ptr=f32,
                y_ptr=dt, C_IN=c_in, HID=hidden, C_OUT=c_out, H=size, W=size, OH=out, OW=out,
                **strides, PAD=pad, TILES_W=tiles_w, TILES_HW=tiles_hw, TILES=tiles_hw * 64,
                SCRATCH_ROW=row if fused else bh, HID_ROW=row)
    constexprs = dict(K=k, STRIDE=stride, ACT=act, EXPAND=expand, PROJECT=fused,
                      POOL=not fused, RESIDUAL=residual, DOT_FP32=False, PRECISION=precision,
                      BLOCK_OH=boh, BLOCK_OW=bow, BLOCK_CIN=bcin, BLOCK_HID=bh,
                      BLOCK_COUT=bcout, INT64=int64, PERSISTENT=persistent)
    return ir.ir_kernel, name, args, constexprs, _dot_options(
        warps, dt, C_IN=c_in, HID=hidden, C_OUT=c_out, **strides)

def _worst_cases(dw, pw, ir, known_spills):
    """The worst cases, with the widest channel blocks: the fused block at stride 1 with the
    residual and k 7 (and the split one: k 7 s 1 has a tail expand step), channels multiples
    of 16 (the register cap is then MAXNREG, 128 for fp16/bf16), each also persistent, and
    MobileNetV2's fp16 k3 s1 residual blocks in both variants; the same and every other
    kernel with channel counts that are not multiples of 16 (120, as V3's 120-channel layers;
    360 hidden): Triton's divisibility hints do not apply, so
    the tl.dot kernels load scalars, the depthwise kernels vectors of VEC = 8 channels. The
    unaligned cases that spill today (the fp32 1x1 kernel) only with known_spills (--worst),
    and so the unaligned bf16 tl.dot cases, which compile to the registers of their fp16 twins
    (within 1), to save CI time."""
    f32 = torch.float32
    for dt, fused, persistent in itertools.product(_DTYPES, (True, False), (False, True)):
        bcin, bcout = ir.GPU_MAX_BLOCK_CIN[dt.itemsize], 128 if fused else 16
        name = (f"{'fused' if fused else 'split'} {_DTYPES[dt]} cin{bcin} cout{bcout} k7 s1 silu "
                f"c64{_PERSISTENT[persistent]}")
        yield _ir_case(ir, name, dt, 64, 384, 64, 56, 7, 1, "silu", fused, bcin, bcout,
                       residual=fused, persistent=persistent)
    # MobileNetV2's fp16 k3 s1 fused blocks with the residual: 64 -> 384 -> 64 (BLOCK_COUT 64)
    # and 96 -> 576 -> 96 (128), where the persistent variant is closest to the 128 cap.
    for (c_v2, bcout), persistent in itertools.product(((64, 64), (96, 128)), (False, True)):
        name = f"fused fp16 cin64 cout{bcout} k3 s1 relu6 c{c_v2}{_PERSISTENT[persistent]}"
        yield _ir_case(ir, name, torch.float16, c_v2, 6 * c_v2, c_v2, 14, 3, 1, "relu6", True,
                       64, bcout, residual=True, persistent=persistent)
    c, hidden = 120, 360
    strides = {f"s{t}{d}": v for t in "xgry" for d, v in zip("nchw", (56 * 56 * c, 1, 56 * c, c))}
    ints = dict(C=c, H=56, W=56, OH=56, OW=56, PAD=3, TILES_W=7, TILES_HW=49)
    for label, dt in [("wide4", f32), ("wide2", torch.float16), ("wide2", torch.bfloat16)]:
        boh, bow, bc, warps = dw.GPU_CONFIGS[label]
        tile = dict(K=7, STRIDE=1, DILATION=1, BLOCK_OH=boh, BLOCK_OW=bow, BLOCK_C=bc,
                    INT64=False)
        name = f"{label} {_DTYPES[dt]} k7 s1 d1 silu c{c}"
        xs = {k: v for k, v in strides.items() if k[1] == "x"}
        yield dw.dw_forward_kernel, name, dict(
            x_ptr=dt, w_ptr=dt, scale_ptr=f32, shift_ptr=f32, y_ptr=dt, **ints, **xs,
            **{k: v for k, v in strides.items() if k[1] == "y"}), dict(tile, ACT="silu"), \
            dict(num_warps=warps, maxnreg=dw.MAXNREG)
        yield dw.dw_backward_params_kernel, name, dict(
            g_ptr=dt, x_ptr=dt, w_ptr=dt, scale_ptr=f32, shift_ptr=f32, gz_ptr=f32,
            partial_ptr=f32, **ints, **{k: v for k, v in strides.items() if k[1] == "g"}, **xs), \
            dict(tile, ACT="silu"), dict(num_warps=warps)
        yield dw.dw_backward_input_kernel, name, dict(
            gz_ptr=f32, w_ptr=dt, gx_ptr=dt, **ints, **{"sgx" + k[2]: v for k, v in xs.items()}), \
            tile, dict(num_warps=warps, maxnreg=dw.MAXNREG)
    for label, dt in itertools.product(pw.GPU_CONFIGS, _DTYPES):
        if dt != torch.float16 and not known_spills:
            continue
        bm, bn, bk, warps = pw.GPU_CONFIGS[label]
        xry = {k: v for k, v in strides.items() if k[1] in "xry"}
        yield pw.pw_kernel, f"{label} {_DTYPES[dt]} silu c{c}", dict(
            x_ptr=dt, w_ptr=dt, scale_ptr=f32, shift_ptr=f32, gate_ptr=f32, res_ptr=dt, y_ptr=dt,
            M=3136, HW=3136, W=56, C_IN=c, C_OUT=c, **xry), dict(
            ACT="silu", HAS_GATE=True, HAS_RES=True, DOT_FP32=False, PRECISION="ieee",
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, INT64=False), \
            _dot_options(warps, dt, C_IN=c, C_OUT=c, **xry)
    for dt, fused, persistent in itertools.product(_DTYPES, (True, False), (False, True)):
        if dt == torch.bfloat16 and not known_spills:
            continue
        bcin, bcout = ir.GPU_MAX_BLOCK_CIN[dt.itemsize], 128 if fused else 16
        name = (f"{'fused' if fused else 'split'} {_DTYPES[dt]} cin{bcin} cout{bcout} k7 s1 silu "
                f"c{c}{_PERSISTENT[persistent]}")
        yield _ir_case(ir, name, dt, c, hidden, c, 56, 7, 1, "silu", fused, bcin, bcout,
                       residual=fused, persistent=persistent)

def _signature(fn, args, constexprs):
    """ASTSource signature, constexprs and divisibility attrs, specialised like a launch."""
    signature, consts, attrs = {}, dict(constexprs), {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        value = args[name]
        if isinstance(value, torch.dtype):
            signature[name] = "*" + _DTYPES[value]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif value == 1:
            signature[name], consts[name] = "constexpr", 1
        else:
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, consts, attrs


def _usage(cubin):
    """{'REG': n, 'STACK': n, 'SHARED': n, 'LOCAL': n} from cuobjdump --dump-resource-usage."""
    from triton.backends.nvidia import compiler
    tool = compiler.get_cuobjdump_path() if hasattr(compiler, "get_cuobjdump_path") else \
        os.path.join(os.path.dirname(compiler.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], check=True,
                              capture_output=True, text=True).stdout
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text)}


def compile_one(case, arch):
    """Compile one (kernel, config) for one arch; the row of the resource table."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, label, args, constexprs, options = case
    warps = options["num_warps"]
    signature, consts, attrs = _signature(fn, args, constexprs)
    target = GPUTarget("cuda", arch, 32)
    compiled = triton.compile(ASTSource(fn, signature, consts, attrs), target=target,
                              options=options)
    use = _usage(compiled.asm["cubin"])
    shared = compiled.metadata.shared + use.get("SHARED", 0)
    mma = ",".join(sorted(set(_MMA.findall(compiled.asm["ptx"])))) or "-"
    want = _EXPECTED_MMA[_DTYPES[args["x_ptr"]]] if fn.__name__ in _DOT_KERNELS else "-"
    if constexprs.get("PRECISION") == "tf32":
        want = "tf32"
    loads = _LOAD.findall(compiled.asm["ptx"])
    scalar = loads.count("")
    problems = []
    # Depthwise kernels on channels_last tensors whose channels and strides are multiples of 8
    # (VEC, _shared.vector_width) load every tap's x and weights as vectors (weights tap-major:
    # _shared.tap_major); a scalar load there is a regression.
    if fn.__name__.startswith("dw_") and constexprs["VEC"] >= 8 and scalar:
        problems.append(f"{scalar} scalar global loads")
    if mma != want:
        problems.append(f"tensor cores {mma}, expected {want}")
    if (use.get("LOCAL", 0) or use.get("STACK", 0)) and not constexprs.get("PERSISTENT"):
        problems.append(f"spills: local {use.get('LOCAL', 0)} B, stack {use.get('STACK', 0)} B")
    if shared > SMEM_LIMIT[arch]:
        problems.append(f"shared {shared} B > sm_{arch} limit {SMEM_LIMIT[arch]} B")
    if use["REG"] * warps * 32 > 65536:
        problems.append(f"{use['REG']} regs x {warps * 32} threads > 65536")
    blocks, occupied = occupancy(arch, use["REG"], warps, shared)
    return dict(kernel=fn.__name__, config=label, arch=f"sm_{arch}", warps=warps, regs=use["REG"],
                spill=use.get("LOCAL", 0) + use.get("STACK", 0), smem=shared, mma=mma,
                blocks=blocks, occupancy=occupied, loads=f"{len(loads) - scalar}/{len(loads)}",
                problems="; ".join(problems))


def check(full=False, jobs=None, worst=False):
    """Compile everything; return the rows (a row with `problems` set is a failure).

    Needs the kernels imported without TRITON_INTERPRET=1 (interpreted kernels do not compile):
    run it as its own process, as main() and the CI test do.
    """
    work = [(index, arch, full, worst) for index in range(len(list(_cases(full, worst))))
            for arch in ARCHS]
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1:
        return [_compile_nth(w) for w in work]
    with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_compile_nth, work, chunksize=4))


def occupancy(arch, regs, warps, smem):
    """(blocks resident per SM, fraction of the SM's 64 warp slots they fill) for a kernel of
    `warps` warps using `regs` registers per thread and `smem` bytes of shared memory per
    block, on sm_`arch` (the CUDA occupancy calculator's register, shared-memory, warp and
    block limits)."""
    blocks = resident_blocks(regs, warps, smem, SMEM_PER_SM[arch])
    return blocks, blocks * warps / MAX_WARPS


def resident_blocks(regs, warps, smem, smem_per_sm, regs_per_sm=REGS_PER_SM,
                    max_warps=MAX_WARPS):
    """Blocks of `warps` warps at `regs` registers per thread and `smem` bytes of shared memory
    an SM with these limits holds at once (registers, shared memory, warp and block slots)."""
    return min(register_blocks(regs, warps, regs_per_sm, max_warps),
               smem_per_sm // (smem + SMEM_RESERVED_PER_BLOCK))


def register_blocks(regs, warps, regs_per_sm=REGS_PER_SM, max_warps=MAX_WARPS):
    """Blocks of `warps` warps at `regs` registers per thread an SM holds by its registers, warp
    slots and block slots (sm_80 and sm_90 alike by default): what a launcher sizes its
    launches by."""
    warp_regs = -(-regs * 32 // REG_UNIT) * REG_UNIT
    return min(MAX_BLOCKS, max_warps // warps, regs_per_sm // warp_regs // warps)


def _compile_nth(work):
    # Worker processes get an index, not the kernel: Triton's JIT functions do not pickle.
    index, arch, full, worst = work
    return compile_one(next(itertools.islice(_cases(full, worst), index, None)), arch)


def format_table(rows):
    """The table; `blocks` and `occ` are the occupancy on the arch's GPU (sm_80 an A100, sm_90 an
    H100): blocks resident per SM and the share of its warp slots they fill."""
    lines = [f"{'kernel':<27} {'config':<48} {'arch':<6} {'warps':>5} {'regs':>5} {'spill':>6} "
             f"{'smem B':>7} {'mma':>4} {'blocks':>6} {'occ':>4} {'vec ld':>6}  problems"]
    for r in rows:
        lines.append(f"{r['kernel']:<27} {r['config']:<48} {r['arch']:<6} {r['warps']:>5} "
                     f"{r['regs']:>5} {r['spill']:>6} {r['smem']:>7} {r['mma']:>4} "
                     f"{r['blocks']:>6} {r['occupancy']:>4.0%} {r['loads']:>6}  {r['problems']}")
    return "\n".join(lines)


def occupancy_summary(rows):
    """Per kernel and arch, the lowest and highest occupancy over its configs."""
    spans = {}
    for r in rows:
        key = (r["kernel"], r["arch"])
        low, high = spans.get(key, (1.0, 0.0))
        spans[key] = (min(low, r["occupancy"]), max(high, r["occupancy"]))
    return "\n".join(f"occupancy on {GPUS[int(arch[3:])]} ({arch}) of {kernel}: {low:.0%} to "
                     f"{high:.0%}" for (kernel, arch), (low, high) in spans.items())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="also enumerate act/stride/dilation/kernel size (slow)")
    parser.add_argument("--worst", action="store_true",
                        help="also the unaligned worst cases that spill today (not part of "
                             "the CI check)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: cores)")
    opts = parser.parse_args(argv)
    # The kernels must be real JIT functions, not interpreted ones: drop the interpreter switch
    # before anything imports them (they are imported lazily, by _cases).
    os.environ.pop("TRITON_INTERPRET", None)
    rows = check(opts.full, opts.jobs, opts.worst)
    print(format_table(rows))
    print(occupancy_summary(rows))
    bad = [r for r in rows if r["problems"]]
    print(f"{len(rows)} compiles, {len(bad)} with problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
