"""A whole inverted-residual block (expand 1x1 -> depthwise k x k -> [squeeze-excite] ->
project 1x1 [+ x]) in as few passes over memory as its shape allows.

Fused (one kernel, x read and y written, nothing else in DRAM): a program owns a 2-D tile of
BLOCK_OH x BLOCK_OW output pixels. It first expands (1x1 GEMM with tl.dot + BN + act) the
tile's input window, i.e. the tile plus its halo, HALO_H x HALO_W = ((BLOCK_OH-1)*S+K) x
((BLOCK_OW-1)*S+K) input pixels, each pixel exactly once, for every hidden channel, into a
per-program scratch region: per expand step the step's x rows (the first BLOCK_CIN channels,
all of them when C_IN <= BLOCK_CIN: 64 for fp16/bf16, 32 for fp32) are loaded once and stay
resident while the hidden chunks of BLOCK_HID channels are expanded from them, so each program
reads its x window once (channels past BLOCK_CIN: once per hidden chunk; resident, 128 spill
on sm_80 and fp32's 64 on sm_90, seen in resources.py). It then walks the hidden chunks:
the k*k depthwise taps read shifted windows of the scratch, and the depthwise output is folded
straight into the project accumulator (BLOCK_P x C_OUT, fp32) with tl.dot. Triton has no
shifted views of an on-chip tile, hence the scratch: one region of ceil(HALO/BLOCK_P)*BLOCK_P x
HID (rounded up to BLOCK_HID) per program in x's dtype (the expanded map is rounded to it, as
stock PyTorch's expand layer stores it; fp16, HID 384: 96 KiB for the 8x8 GPU tile at k=3 s=1,
240 KiB at k=3 s=2; fp32 twice that), written and read back by the same program. Where there
are more tiles than programs the GPU runs at once and the looped variant compiles as resident
as the plain one, the launch is persistent (launch_plan): one launch of the programs the GPU
runs at once, each taking every P-th tile in turn and reusing its region, so the scratch is
no more than those programs' regions and should stay in L2 rather than reach DRAM (modelled;
no GPU has measured it); else plain waves of whole images within SCRATCH_BUDGET. Expand work
per tile and hidden chunk: the window's HALO_H*HALO_W pixels once, in whole BLOCK_P steps (8x8
tile: 128 rows for 100 pixels at k=3 s=1, 320 for 289 at k=3 s=2), where recomputing the
expansion at every tap took k*k*BLOCK_P.

Split (two kernels) when the project accumulator would not fit in registers (C_OUT > 128), when
the block has squeeze-excite (its gate needs the whole map pooled before projecting), or when
the fused grid (one program per output tile and image, each walking every hidden chunk) would
leave SMs idle: fewer programs than the GPU has SMs (V2's 14x14 blocks at batch 1 are 4 tiles),
where the split path's first kernel has one program per tile and hidden chunk. The same
kernel with PROJECT=False writes the hidden tensor once (NHWC, x's dtype) and, for SE, per-tile
channel sums; the gate's tiny fc1/se_act/fc2/se_gate run as torch ops; the 1x1 GEMM kernel of
pwconv_bn_act reads the hidden tensor once, applies the gate in its prologue and adds x.
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from fastdw.contract import (ACTIVATIONS, SE_GATES, conv_output_size, output_memory_format,
                             same_padding)
from fastdw.kernels.triton._shared import (activation, as_offset, compiled_residency,
                                           dot_operand, dot_precision, interpreting, maxnreg,
                                           multiprocessors, needs_int64, on_device_of,
                                           resident_programs, tap_major, vec_int, vectorised)
from fastdw.kernels.triton.dwconv_bn_act import spatial_tile, window_tap
from fastdw.kernels.triton.pwconv_bn_act import (dot_in_fp32, forward as pw_forward,
                                                  handled as pw_handled)

# The fused kernel keeps BLOCK_P x BLOCK_COUT fp32 accumulators; above this it splits.
MAX_FUSED_COUT = 128
# GPU tile (BLOCK_OH, BLOCK_OW, BLOCK_HID, num_warps). fp32 multiplies on CUDA cores (TF32 only
# when allowed: _shared.dot_precision),
# whose tl.dot operand layouts need more registers: it takes at most 32 input channels per
# expand step, fp16/bf16 64 (beyond that ptxas spills, seen in resources.py).
GPU_CONFIG = (8, 8, 16, 8)
GPU_MAX_BLOCK_CIN = {4: 32, 2: 64}  # by element size
# Bytes of expand scratch (x's dtype) a launch off a GPU may use (launch_plan), and per wave on
# a GPU where the persistent variant does not pay (waves of whole images reuse the same scratch,
# so it stays in L2, 40 MB on A100, 50 MB on H100, and is not written back to DRAM).
SCRATCH_BUDGET = 8 << 20
# The ints ir_kernel takes divided by its VEC (_shared.vectorised): channel counts, and the image,
# row and column strides of x and y; with VEC >= 8 a channels_last x or y whose channels are not
# a multiple of 16 (V2's 24, V3's 40, 72, 120, ...) is loaded and stored in vectors.
VEC_ARGS = ("C_IN", "HID", "C_OUT", "sxn", "sxh", "sxw", "syn", "syh", "syw")


def _block(channels, cap):
    return min(max(triton.next_power_of_2(channels), 16), cap)


def runs_fused(se, c_out, programs, sms):
    """Whether a block runs as the fused kernel: no squeeze-excite, its project accumulator
    fits (C_OUT <= MAX_FUSED_COUT), and its `programs` fused programs (images x output tiles)
    are at least the `sms` SMs of the GPU (None: not on a GPU, where SMs do not apply)."""
    return not se and c_out <= MAX_FUSED_COUT and (sms is None or programs >= sms)


def pick_config(c_in, hidden, c_out, out_h, out_w, fused, element_size, gpu_tiles=False):
    """(BLOCK_OH, BLOCK_OW, BLOCK_CIN, BLOCK_HID, BLOCK_COUT, num_warps); gpu_tiles: the GPU
    tile even under the interpreter (on a GPU it always is)."""
    block_cout = _block(c_out, MAX_FUSED_COUT) if fused else 16  # unused when not fused
    if interpreting() and not gpu_tiles:  # few, large programs: ~35 ms each when interpreted
        block_ow = min(triton.next_power_of_2(out_w), 32)
        block_oh = min(triton.next_power_of_2(out_h), max(1, 1024 // block_ow))
        return block_oh, block_ow, _block(c_in, 256), _block(hidden, 256), block_cout, 4
    oh, ow, bh, warps = GPU_CONFIG
    return oh, ow, _block(c_in, GPU_MAX_BLOCK_CIN[element_size]), bh, block_cout, warps


def halo_pixels(k, stride, block_oh, block_ow):
    """Input pixels (HALO_H * HALO_W) an output tile's depthwise window covers: the expanded
    pixels one program computes per hidden chunk."""
    return ((block_oh - 1) * stride + k) * ((block_ow - 1) * stride + k)


def expand_steps(halo, block_p):
    """The row counts of the kernel's expand steps over a window of `halo` pixels: whole BLOCK_P
    steps, then one step of the rest rounded up to a power of two of at least 16 (tl.dot's
    least M) when that is less than a whole step: 8x8 tile, k=5 s=1: 64, 64, 16 = 144 rows for
    144 pixels, where whole steps took 192; k=7 s=1: 208 for 196, not 256; k=3 unchanged."""
    full = halo // block_p * block_p
    rest = halo - full
    tail = max(16, triton.next_power_of_2(rest)) if rest else 0
    if tail >= block_p:  # one more whole step
        return [block_p] * (full // block_p + 1)
    return [block_p] * (full // block_p) + ([tail] if tail else [])


def scratch_row(hidden, block_hid, fused):
    """Scratch columns per window pixel (the kernel's SCRATCH_ROW): the hidden channels one
    program expands, every chunk of them when fused, one chunk when split."""
    return triton.cdiv(hidden, block_hid) * block_hid if fused else block_hid


def scratch_region(k, stride, block_oh, block_ow, row):
    """Elements (in x's dtype) of one program's expand scratch: the rows of its expand steps
    (expand_steps), by `row` columns (scratch_row)."""
    steps = expand_steps(halo_pixels(k, stride, block_oh, block_ow), block_oh * block_ow)
    return sum(steps) * row


def launch_plan(n, tiles_hw, chunks, region_bytes, sms, regs, warps, residency):
    """(persistent, images per launch, programs per launch along grid axis 0) of the block
    kernel over n images of tiles_hw output tiles, `chunks` programs along axis 1, a scratch
    region of `region_bytes` per program. `residency(persistent)`: (programs the GPU runs at
    once, spilled bytes) of that variant as compiled for this launch, or None where no compiled
    kernel is known (the interpreter's warmup; a jit_cache_hook that takes the compile over):
    then plain waves, of at least the programs the GPU surely runs by the register cap.

    Off a GPU (sms None): one persistent launch of as many programs as SCRATCH_BUDGET allows.
    On a GPU, a program per tile when the tiles are no more than the programs it surely runs
    at once (by the register cap `regs`); else one persistent launch of the programs the GPU
    runs at once, each looping over every P-th tile and reusing its scratch, when that variant
    compiles without spilling and runs as many programs at once as the plain one (its loop
    can take more registers: on sm_90 the split fp16 blocks and the unaligned C=120 fused one
    lose a block per SM, V2's 64-channel fused block spills 8 B; resources.py's persistent
    rows); else plain launches in waves of whole
    images, as many as SCRATCH_BUDGET allows and at least the programs the GPU runs at once,
    which reuse one scratch. Images per launch are at least 1 (an empty batch: no launch)."""
    tiles = n * tiles_hw
    whole = max(1, n)
    if sms is None:
        return True, whole, max(1, min(tiles, SCRATCH_BUDGET // max(1, chunks * region_bytes)))
    surely = resident_programs(sms, regs, warps)
    if tiles * chunks <= surely:
        return False, whole, tiles
    looped, plain = residency(True), residency(False)
    if looped is not None and plain is not None and not looped[1] and looped[0] >= plain[0]:
        return True, n, max(1, min(tiles, looped[0] // chunks))
    plain = surely if plain is None else plain[0]
    wave = SCRATCH_BUDGET // max(1, tiles_hw * chunks * region_bytes)
    wave = max(1, min(n, max(wave, triton.cdiv(plain, tiles_hw * chunks))))
    return False, wave, wave * tiles_hw


@triton.jit
def _expand_step(q0, zero, h_start, h_end, x_base, x_ptr, we_ptr, es_ptr, eb_ptr, scratch, row0,
                 col0, C_IN, HID, H, W, sxc, sxh, sxw, SCRATCH_ROW, STEP: tl.constexpr,
                 HALO: tl.constexpr, HALO_W: tl.constexpr, ACT: tl.constexpr,
                 DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, BLOCK_CIN: tl.constexpr,
                 BLOCK_HID: tl.constexpr, RESIDENT: tl.constexpr):
    """e[q, h] of ir_kernel for the STEP window pixels q0 <= q < q0 + STEP (0 past the window
    and outside the image) and the hidden channels h_start <= h < h_end, into row q, column
    h - h_start of the scratch, in its dtype. RESIDENT (fused: every hidden chunk): the step's
    first BLOCK_CIN input channels are loaded once, before the hidden loop, and stay resident
    for every hidden chunk, so with C_IN <= BLOCK_CIN each program reads its x window once;
    further input chunks are reloaded per hidden chunk. Otherwise (split: one chunk) a plain
    loop over the input chunks, which takes fewer registers."""
    q = q0 + zero + tl.arange(0, STEP)  # zero: _ir_tile's
    ih = row0 + q // HALO_W
    iw = col0 + q % HALO_W
    inside = (q < HALO) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    pix = ih * sxh + iw * sxw
    ci = tl.arange(0, BLOCK_CIN) + zero
    if RESIDENT:
        x0 = tl.load(x_base + pix[:, None] + (ci * sxc)[None, :],
                     mask=inside[:, None] & (ci < C_IN)[None, :], other=0.0)
        x0 = dot_operand(x0, x_ptr, DOT_FP32)
    hl = tl.arange(0, BLOCK_HID)
    for h0 in range(h_start, h_end, BLOCK_HID):
        hc = h0 + hl
        h_mask = hc < HID
        if RESIDENT:
            we = tl.load(we_ptr + hc[None, :] * C_IN + ci[:, None],
                         mask=(ci < C_IN)[:, None] & h_mask[None, :], other=0.0)
            e = tl.dot(x0, dot_operand(we, x_ptr, DOT_FP32), input_precision=PRECISION)
            first = BLOCK_CIN
        else:
            e = tl.zeros((STEP, BLOCK_HID), tl.float32)
            first = 0
        for i0 in range(first, C_IN, BLOCK_CIN):
            cj = i0 + ci
            cj_mask = cj < C_IN
            xv = tl.load(x_base + pix[:, None] + (cj * sxc)[None, :],
                         mask=inside[:, None] & cj_mask[None, :], other=0.0)
            we = tl.load(we_ptr + hc[None, :] * C_IN + cj[:, None],
                         mask=cj_mask[:, None] & h_mask[None, :], other=0.0)
            e = tl.dot(dot_operand(xv, x_ptr, DOT_FP32), dot_operand(we, x_ptr, DOT_FP32), e,
                       input_precision=PRECISION)
        es = tl.load(es_ptr + hc, mask=h_mask, other=0.0)
        eb = tl.load(eb_ptr + hc, mask=h_mask, other=0.0)
        # Zero padding applies to the expanded map: act(0 * es + eb) != 0.
        e = tl.where(inside[:, None], activation(e * es[None, :] + eb[None, :], ACT), 0.0)
        tl.store(scratch + q[:, None] * SCRATCH_ROW + (hc - h_start)[None, :],
                 e.to(scratch.dtype.element_ty))


# For output pixel p = (n, oh, ow) of the tile and hidden channel h (padding P = (K-1)//2):
#   e[q, h]  = act(sum_i x[n, i, q] * we[h, i] * es[h] + eb[h])  at input pixel q, 0 outside
#              the image (the depthwise stage pads the hidden map with zeros, not act(eb));
#              without expansion e = x
#   d[p, h]  = act(sum_{a,b < K} e[(oh*S - P + a, ow*S - P + b), h] * wd[h, a, b] * ds[h] + db[h])
# PROJECT:   y[n, o, p] = sum_h d[p, h] * wp[o, h] * ps[o] + pb[o]  (+ x[n, o, p] if RESIDUAL)
# otherwise: hidden[n, p, h] = d[p, h] for this program's chunk of h, and with POOL
#            pool[tile, h] = sum over the tile's pixels of d[p, h]
# With EXPAND, e is computed once per program for the tile's window and the program's hidden
# channels h0 <= h < h1 (PROJECT: all; else one chunk): input pixel
# q = (r0*S - P + u, c0*S - P + v), (u, v) < (HALO_H, HALO_W), (r0, c0) the tile's first output
# pixel, goes to scratch[u*HALO_W + v, h - h0]; tap (a, b) of tile pixel (i, j) reads
# scratch[(i*S + a)*HALO_W + j*S + b, h - h0].
@triton.jit
def ir_kernel(
    x_ptr,                     # block input (N, C_IN, H, W), any strides
    we_ptr, es_ptr, eb_ptr,    # expand weight (HID, C_IN) contiguous, scale, shift (fp32)
    wd_ptr, ds_ptr, db_ptr,    # depthwise weight tap-major (K*K, HID) contiguous, scale, shift
    wp_ptr, ps_ptr, pb_ptr,    # project weight (C_OUT, HID) contiguous, scale, shift
    hid_ptr,                   # out when not PROJECT: hidden (N, OH, OW, HID_ROW), x's dtype,
                               # channels HID..HID_ROW written as 0
    scratch_ptr,               # with EXPAND: the expand scratch (programs, REGION), x's dtype,
                               # program = pid0 * programs(1) + pid1; REGION = window rows x
                               # SCRATCH_ROW
    pool_ptr,                  # out with POOL: (TILES, HID) fp32 per-tile sums
    y_ptr,                     # out when PROJECT: (N, C_OUT, OH, OW), any strides
    C_IN, HID, C_OUT, H, W, OH, OW,  # C_IN, HID, C_OUT / VEC
    sxn, sxc, sxh, sxw,        # strides of x (sxn, sxh, sxw / VEC)
    syn, syc, syh, syw,        # strides of y (syn, syh, syw / VEC); not PROJECT: unused
    PAD, TILES_W, TILES_HW,    # padding (K-1)//2; output tiles per tile row / per image
    TILES,                     # PERSISTENT: output tiles of the launch, its images x TILES_HW;
                               # else unused (the launcher passes the call's, as it warmed up)
    SCRATCH_ROW,               # scratch columns per window pixel: the hidden channels this
                               # program expands (PROJECT: all, rounded up to BLOCK_HID)
    HID_ROW,                   # (not PROJECT) the hidden tensor's pixel stride: HID rounded up
                               # to BLOCK_HID, a multiple of 16 for the 1x1 GEMM's vector loads
    K: tl.constexpr, STRIDE: tl.constexpr, ACT: tl.constexpr,
    EXPAND: tl.constexpr,      # the block has an expand 1x1 stage
    PROJECT: tl.constexpr,     # fused: project into y; else write the hidden tensor
    POOL: tl.constexpr,        # (not PROJECT) also write per-tile channel sums for SE
    RESIDUAL: tl.constexpr,    # (PROJECT) add x; stride 1 and C_IN == C_OUT
    DOT_FP32: tl.constexpr,    # tl.dot on fp32 operands (bf16 under the interpreter)
    PRECISION: tl.constexpr,   # tl.dot input_precision: "ieee", or "tf32" (fp32, opt-in)
    BLOCK_OH: tl.constexpr, BLOCK_OW: tl.constexpr,   # output tile
    BLOCK_CIN: tl.constexpr,   # input channels per expand tl.dot step
    BLOCK_HID: tl.constexpr,   # hidden channels per chunk
    BLOCK_COUT: tl.constexpr,  # (PROJECT) all output channels, padded to a power of 2
    INT64: tl.constexpr,       # offsets within an image of x or y in int64 (>= 2**31 elements)
    VEC: tl.constexpr,         # the ints marked / VEC are multiples of VEC (vectorised)
    PERSISTENT: tl.constexpr,  # the programs loop over the tiles (launch_plan), else one each
):
    C_IN, HID, C_OUT = C_IN * VEC, HID * VEC, C_OUT * VEC
    sxn, syn = vec_int(sxn, VEC, True), vec_int(syn, VEC, True)
    sxc, sxh, sxw = as_offset(sxc, INT64), vec_int(sxh, VEC, INT64), vec_int(sxw, VEC, INT64)
    syc, syh, syw = as_offset(syc, INT64), vec_int(syh, VEC, INT64), vec_int(syw, VEC, INT64)
    BLOCK_P: tl.constexpr = BLOCK_OH * BLOCK_OW
    HALO_W: tl.constexpr = (BLOCK_OW - 1) * STRIDE + K
    HALO: tl.constexpr = ((BLOCK_OH - 1) * STRIDE + K) * HALO_W
    # The expand steps of expand_steps() (launcher): whole BLOCK_P steps up to WHOLE, then one of
    # PART rows (the rest rounded up to a power of two >= 16, when less than a whole step).
    FULL: tl.constexpr = HALO // BLOCK_P * BLOCK_P
    REST: tl.constexpr = HALO - FULL
    TAIL: tl.constexpr = 0 if REST == 0 else max(16, 1 << (REST - 1).bit_length())
    WHOLE: tl.constexpr = FULL + BLOCK_P if TAIL >= BLOCK_P else FULL
    PART: tl.constexpr = 0 if TAIL >= BLOCK_P else TAIL
    ROWS: tl.constexpr = WHOLE + PART if EXPAND else 0
    scratch = scratch_ptr + (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) \
        .to(tl.int64) * (ROWS * SCRATCH_ROW)
    if PERSISTENT:  # program i of the P along grid axis 0 takes tiles i, i + P, ... in turn
        for tile in tl.range(tl.program_id(0), TILES, tl.num_programs(0), num_stages=1):
            # 0 (tile < TILES), opaque to the compiler: see _ir_tile
            _ir_tile(tile, (tile // TILES) * 16, x_ptr, we_ptr, es_ptr, eb_ptr, wd_ptr, ds_ptr,
                     db_ptr, wp_ptr, ps_ptr, pb_ptr, hid_ptr, scratch, pool_ptr, y_ptr, C_IN, HID,
                     C_OUT, H, W, OH, OW, sxn, sxc, sxh, sxw, syn, syc, syh, syw, PAD, TILES_W,
                     TILES_HW, SCRATCH_ROW, HID_ROW, K, STRIDE, ACT, EXPAND, PROJECT, POOL,
                     RESIDUAL, DOT_FP32, PRECISION, BLOCK_OH, BLOCK_OW, BLOCK_CIN, BLOCK_HID,
                     BLOCK_COUT, HALO_W, HALO, WHOLE, PART)
            if EXPAND:
                tl.debug_barrier()  # every tap is read before the next tile's expand writes
    else:  # a program per tile
        _ir_tile(tl.program_id(0), 0, x_ptr, we_ptr, es_ptr, eb_ptr, wd_ptr, ds_ptr, db_ptr,
                 wp_ptr, ps_ptr, pb_ptr, hid_ptr, scratch, pool_ptr, y_ptr, C_IN, HID, C_OUT, H,
                 W, OH, OW, sxn, sxc, sxh, sxw, syn, syc, syh, syw, PAD, TILES_W, TILES_HW,
                 SCRATCH_ROW, HID_ROW, K, STRIDE, ACT, EXPAND, PROJECT, POOL, RESIDUAL, DOT_FP32,
                 PRECISION, BLOCK_OH, BLOCK_OW, BLOCK_CIN, BLOCK_HID, BLOCK_COUT, HALO_W, HALO,
                 WHOLE, PART)


@triton.jit
def _ir_tile(tile, zero, x_ptr, we_ptr, es_ptr, eb_ptr, wd_ptr, ds_ptr, db_ptr, wp_ptr, ps_ptr,
             pb_ptr, hid_ptr, scratch, pool_ptr, y_ptr, C_IN, HID, C_OUT, H, W, OH, OW, sxn, sxc,
             sxh, sxw, syn, syc, syh, syw, PAD, TILES_W, TILES_HW, SCRATCH_ROW, HID_ROW,
             K: tl.constexpr, STRIDE: tl.constexpr, ACT: tl.constexpr, EXPAND: tl.constexpr,
             PROJECT: tl.constexpr, POOL: tl.constexpr, RESIDUAL: tl.constexpr,
             DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, BLOCK_OH: tl.constexpr,
             BLOCK_OW: tl.constexpr, BLOCK_CIN: tl.constexpr, BLOCK_HID: tl.constexpr,
             BLOCK_COUT: tl.constexpr, HALO_W: tl.constexpr, HALO: tl.constexpr,
             WHOLE: tl.constexpr, PART: tl.constexpr):
    """ir_kernel's work for output tile `tile` (image tile // TILES_HW), inlined in its loop.
    `zero` is 0: a constant for the plain kernel, a value computed from the tile in the
    persistent loop, added to the index ranges so they are computed in the loop. Loop-invariant
    code motion would otherwise hoist every range and the index tensors built from them out of
    the tile loop, where they stay live across it: the looped fp16 fused kernels spilled at the
    128-register cap and most others lost a block per SM (resources.py's persistent rows). A
    multiple of 16, so the ranges keep their divisibility and the loads stay vectors."""
    BLOCK_P: tl.constexpr = BLOCK_OH * BLOCK_OW
    tile = tl.cast(tile, tl.int32)  # the interpreter's loop index is a Python int
    o = tl.arange(0, BLOCK_COUT) + zero
    o_mask = o < C_OUT
    hl = tl.arange(0, BLOCK_HID) + zero
    n, rows, cols = spatial_tile(tile, TILES_W, TILES_HW, BLOCK_OH, BLOCK_OW, zero)
    x_base = x_ptr + n.to(tl.int64) * sxn
    out = (rows < OH) & (cols < OW)
    # This tile's first input row/column of the window, and each tile pixel's window offset.
    t = tile % TILES_HW
    row0 = (t // TILES_W) * (BLOCK_OH * STRIDE) - PAD
    col0 = (t % TILES_W) * (BLOCK_OW * STRIDE) - PAD
    p = tl.arange(0, BLOCK_P) + zero
    p_win = (p // BLOCK_OW) * (STRIDE * HALO_W) + (p % BLOCK_OW) * STRIDE
    acc = tl.zeros((BLOCK_P, BLOCK_COUT), tl.float32)
    if PROJECT:  # this program walks every hidden chunk
        h_start = 0
        h_end = HID
    else:        # one chunk per program along grid axis 1
        h_start = tl.program_id(1) * BLOCK_HID
        h_end = h_start + BLOCK_HID
    if EXPAND:  # the window expanded for this program's hidden channels, each pixel once
        for q0 in range(0, WHOLE, BLOCK_P):
            _expand_step(q0, zero, h_start, h_end, x_base, x_ptr, we_ptr, es_ptr, eb_ptr,
                         scratch, row0, col0, C_IN, HID, H, W, sxc, sxh, sxw, SCRATCH_ROW,
                         BLOCK_P, HALO, HALO_W, ACT, DOT_FP32, PRECISION, BLOCK_CIN, BLOCK_HID,
                         PROJECT)
        if PART > 0:
            _expand_step(WHOLE, zero, h_start, h_end, x_base, x_ptr, we_ptr, es_ptr, eb_ptr,
                         scratch, row0, col0, C_IN, HID, H, W, sxc, sxh, sxw, SCRATCH_ROW, PART,
                         HALO, HALO_W, ACT, DOT_FP32, PRECISION, BLOCK_CIN, BLOCK_HID, PROJECT)
        tl.debug_barrier()  # the taps read pixels other threads stored
    for h0 in range(h_start, h_end, BLOCK_HID):
        hc = h0 + hl
        h_mask = hc < HID
        dw = tl.zeros((BLOCK_P, BLOCK_HID), tl.float32)
        for a in range(K):  # run-time loops, like the depthwise kernel's window
            for b in range(K):
                if EXPAND:
                    e = tl.load(scratch + (p_win + (a * HALO_W + b))[:, None] * SCRATCH_ROW
                                + (hc - h_start)[None, :]).to(tl.float32)
                else:
                    e = window_tap(x_base, rows, cols, hc, h_mask, H, W, sxc, sxh, sxw, PAD,
                                   a, b, STRIDE, 1)
                wd = tl.load(wd_ptr + (a * K + b) * HID + hc, mask=h_mask, other=0.0)
                dw += e * wd.to(tl.float32)[None, :]
        ds = tl.load(ds_ptr + hc, mask=h_mask, other=0.0)
        db = tl.load(db_ptr + hc, mask=h_mask, other=0.0)
        # The padding channels: 0. Their expand weights are 0, so an Inf input pixel makes
        # them Inf * 0 = NaN, which the project GEMM would spread to every output channel.
        d = tl.where(h_mask[None, :], activation(dw * ds[None, :] + db[None, :], ACT), 0.0)
        if PROJECT:
            wp = tl.load(wp_ptr + o[None, :] * HID + hc[:, None],
                         mask=h_mask[:, None] & o_mask[None, :], other=0.0)
            acc = tl.dot(dot_operand(d, x_ptr, DOT_FP32), dot_operand(wp, x_ptr, DOT_FP32), acc,
                         input_precision=PRECISION)
        else:
            pix = (n.to(tl.int64) * OH + rows) * OW + cols
            tl.store(hid_ptr + pix[:, None] * HID_ROW + hc[None, :],
                     d.to(hid_ptr.dtype.element_ty), mask=out[:, None] & (hc < HID_ROW)[None, :])
            if POOL:
                pooled = tl.sum(tl.where(out[:, None], d, 0.0), axis=0)
                tl.store(pool_ptr + tile.to(tl.int64) * HID + hc, pooled, mask=h_mask)
    if PROJECT:
        ps = tl.load(ps_ptr + o, mask=o_mask, other=0.0)
        pb = tl.load(pb_ptr + o, mask=o_mask, other=0.0)
        y = acc * ps[None, :] + pb[None, :]
        mask = out[:, None] & o_mask[None, :]
        if RESIDUAL:  # stride 1: output pixel (oh, ow) is input pixel (oh, ow)
            y += tl.load(x_base + (rows * sxh + cols * sxw)[:, None] + (o * sxc)[None, :],
                         mask=mask, other=0.0).to(tl.float32)
        ptrs = y_ptr + n.to(tl.int64) * syn + (rows * syh + cols * syw)[:, None] \
            + (o * syc)[None, :]
        tl.store(ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)


def handled(x):
    """What the project GEMM of the split path handles (its output has no more pixels than x)."""
    return pw_handled(x)


def forward(x, block, stride, act, residual, se_act, se_gate, gpu_tiles=False):
    """The block on x; `block` is a fastdw.contract.BlockWeights. gpu_tiles: launch the GPU
    tile configs (of both kernels of the split path) even under the interpreter."""
    b = block
    n, c_in, h, w = x.shape
    hidden, k, c_out = b.dw_w.shape[0], b.dw_w.shape[-1], b.project_w.shape[0]
    pad = same_padding(k)
    oh, ow = (conv_output_size(s, k, stride, pad, 1) for s in (h, w))
    se = b.se_w1 is not None
    # The spatial tile is the same on both paths: the programs a fused launch would have.
    block_oh, block_ow = pick_config(c_in, hidden, c_out, oh, ow, False, x.element_size(),
                                     gpu_tiles)[:2]
    tiles_w = triton.cdiv(ow, block_ow)
    tiles_hw = triton.cdiv(oh, block_oh) * tiles_w
    sms = multiprocessors(x.device)
    fused = runs_fused(se, c_out, n * tiles_hw, sms)
    block_oh, block_ow, block_cin, block_hid, block_cout, warps = pick_config(
        c_in, hidden, c_out, oh, ow, fused, x.element_size(), gpu_tiles)
    expand = b.expand_w is not None
    chunks = 1 if fused else triton.cdiv(hidden, block_hid)  # grid axis 1
    row = scratch_row(hidden, block_hid, fused)
    region = scratch_region(k, stride, block_oh, block_ow, row) if expand else 0
    # The split path's hidden tensor: NHWC, each pixel's channels padded with zeros to a
    # multiple of BLOCK_HID (16), so the 1x1 GEMM reads it in vectors with K a multiple of 16.
    hid_row = scratch_row(hidden, block_hid, True)
    if fused:
        y = torch.empty((n, c_out, oh, ow), dtype=x.dtype, device=x.device,
                        memory_format=output_memory_format(x))
        hid = y  # not touched by the fused kernel
    else:
        hid = torch.empty((n, oh, ow, hid_row), dtype=x.dtype, device=x.device)
        y = hid
    regs = maxnreg(x.element_size(), c_in, hidden, c_out, *x.stride(), *y.stride())
    tile_sums = torch.empty(n * tiles_hw * hidden if se else 1, dtype=torch.float32,
                            device=x.device)
    # Without expansion the expand arguments are placeholders, never read.
    kernel_weights = ((b.expand_w.contiguous(), b.expand_scale, b.expand_shift) if expand
                      else (b.dw_scale, b.dw_scale, b.dw_shift)) + (
        tap_major(b.dw_w), b.dw_scale, b.dw_shift, b.project_w.contiguous(), b.project_scale,
        b.project_shift)
    int64 = needs_int64(x, y)  # the hidden tensor and the scratch are int64-indexed anyway
    strides = dict(zip(("sxn", "sxc", "sxh", "sxw"), x.stride()))
    # Split: y's strides are unused, x's stand in (so they do not narrow VEC).
    strides.update(zip(("syn", "syc", "syh", "syw"), (y if fused else x).stride()))
    ints, vec = vectorised(dict(C_IN=c_in, HID=hidden, C_OUT=c_out, **strides), VEC_ARGS)
    meta = dict(H=h, W=w, OH=oh, OW=ow, PAD=pad, TILES_W=tiles_w, TILES_HW=tiles_hw,
                SCRATCH_ROW=row, HID_ROW=hid_row, **ints, K=k, STRIDE=stride, ACT=act,
                EXPAND=expand, PROJECT=fused, POOL=se, RESIDUAL=residual,
                DOT_FP32=dot_in_fp32(x.dtype), PRECISION=dot_precision(x.dtype),
                BLOCK_OH=block_oh, BLOCK_OW=block_ow, BLOCK_CIN=block_cin, BLOCK_HID=block_hid,
                BLOCK_COUT=block_cout, INT64=int64, VEC=vec, num_warps=warps, maxnreg=regs)

    def residency(persistent):  # the variant compiled (or fetched) for these arguments
        # A one-element scratch specialises like the real one (aligned, x's dtype).
        kernel = ir_kernel.warmup(x, *kernel_weights, hid, x.new_empty(1), tile_sums, y,
                                  grid=(1,), TILES=n * tiles_hw, PERSISTENT=persistent, **meta)
        return None if kernel is None else compiled_residency(kernel)

    with on_device_of(x):
        persistent, wave, programs = launch_plan(n, tiles_hw, chunks, region * x.element_size(),
                                                 sms, regs, warps, residency=residency)
        scratch = x.new_empty(programs * chunks * region or 1)
        for n0 in range(0, n, wave):
            images = min(wave, n - n0)
            ir_kernel[(min(programs, images * tiles_hw), chunks)](
                x[n0:n0 + images], *kernel_weights, hid[n0:n0 + images], scratch,
                tile_sums[n0 * tiles_hw * hidden:] if se else tile_sums, y[n0:n0 + images],
                TILES=(images if persistent else n) * tiles_hw, PERSISTENT=persistent, **meta)
    if se:
        pooled = tile_sums.view(n, tiles_hw, hidden).sum(1)
    if fused:
        return y
    gate = None
    if se:  # torchvision SqueezeExcitation on the pooled (N, HID) vector: tiny, torch ops
        pooled = pooled / (oh * ow)
        hidden_se = ACTIVATIONS[se_act](F.linear(pooled, b.se_w1.float(), b.se_b1.float()))
        gate = SE_GATES[se_gate](F.linear(hidden_se, b.se_w2.float(), b.se_b2.float()))
    # The padding channels of hidden are 0; the project weight and the gate are padded with 0
    # (copied only where there is padding).
    def padded(t):
        return t if hid_row == hidden else F.pad(t, (0, hid_row - hidden))
    return pw_forward(hid.permute(0, 3, 1, 2), padded(b.project_w), b.project_scale,
                      b.project_shift, "none", x if residual else None,
                      gate=None if gate is None else padded(gate), out_like=x,
                      gpu_tiles=gpu_tiles)
