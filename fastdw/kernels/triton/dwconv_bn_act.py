"""Depthwise k x k convolution + folded BatchNorm + activation, forward and backward.

Depthwise convolution does 2*k*k FLOPs per output element, so these kernels are bound by memory
traffic: a direct multiply-add over the k x k window (never tl.dot), channels innermost (NHWC,
channels_last) so every tap is one vectorised load of BLOCK_C consecutive channels, and a 2-D
spatial tile whose neighbouring taps re-read the same cache lines instead of DRAM. Any strides
work (NCHW too: the same kernel, only the loads are no longer vectorised), so no input is copied.

The k x k window is a run-time loop, not unrolled (tl.static_range): unrolled, the compiler
issues all k*k tile loads up front to hide latency, and for k = 7 those live tiles spill (6 KB
of stack per thread on sm_90, seen in the static check, resources.py); with the loop the same
kernels use 64-158 registers and no stack.

Offsets within one image are int32 unless an image of a tensor reaches 2**31 elements (INT64,
chosen by the launcher: the strides, and so every offset, become int64); an image's start is
always int64.
"""
import torch
import triton
import triton.language as tl

from fastdw.contract import conv_output_size, output_memory_format
from fastdw.kernels.triton._shared import (activation, activation_backward, as_offset,
                                           interpreting, multiprocessors, needs_int64,
                                           on_device_of, row_strides, tap_major, vec_int,
                                           vec_strides, vector_width)


# Tile configs (BLOCK_OH, BLOCK_OW, BLOCK_C, num_warps), chosen by channel count and element size.
# On a GPU: 64-pixel 2-D tiles, a channel block of 64 bytes (fp32) / 128 bytes (fp16, bf16) per
# pixel. Under the interpreter every program costs ~35 ms whatever its size, so one program covers
# as much of the map as possible, unless the launcher is asked for the GPU's tiles (gpu_tiles=True:
# how tests/triton/test_gpu_configs.py runs them numerically). resources.py compiles every entry of
# GPU_CONFIGS.
# "<label>_small": where those tiles give the GPU fewer programs than it has SMs (the 7x7 and
# 14x14 maps of the last stages at small batches: a 7x7 map of 960 fp16 channels is 15
# programs on a 132-SM H100), 4x4 pixels of the same channel block: 3-4x the programs on 7x7
# and 14x14 maps. The narrow one on one warp, 8 elements a thread (4 warps gave 2, and scalar
# fp16 loads).
GPU_CONFIGS = {"narrow": (8, 16, 16, 4), "wide4": (8, 8, 32, 4), "wide2": (8, 8, 64, 4),
               "narrow_small": (4, 4, 16, 1), "wide4_small": (4, 4, 32, 4),
               "wide2_small": (4, 4, 64, 4)}
# Register cap of the forward and grad-input kernels (4 warps: 4 blocks per SM or more). Without
# one ptxas chose 56-128 registers and an 8-byte stack spill for some configs (the fp16 narrow
# grad-input, the fp16 forward on 120 channels; seen in resources.py), which fit at 128 with
# none. The grad-params kernel keeps ptxas's choice: it needs up to ~235 on 120 channels.
MAXNREG = 128


def pick_config(channels, element_size, out_h, out_w, gpu_tiles=False, images=1, sms=None):
    """(BLOCK_OH, BLOCK_OW, BLOCK_C, num_warps) for `images` maps of out_h x out_w (the tiled
    map) and `channels`; sms: the GPU's SMs (multiprocessors), None off a GPU."""
    if interpreting() and not gpu_tiles:
        block_c = min(triton.next_power_of_2(channels), 256)
        block_ow = min(triton.next_power_of_2(out_w), 64)
        block_oh = min(triton.next_power_of_2(out_h), max(1, 65536 // (block_ow * block_c)))
        return block_oh, block_ow, block_c, 4
    label = "narrow" if channels <= 16 else "wide4" if element_size == 4 else "wide2"
    block_oh, block_ow, block_c, _ = GPU_CONFIGS[label]
    programs = images * triton.cdiv(out_h, block_oh) * triton.cdiv(out_w, block_ow) \
        * triton.cdiv(channels, block_c)
    return GPU_CONFIGS[label + "_small" if sms is not None and programs < sms else label]


@triton.jit
def spatial_tile(pid, TILES_W, TILES_HW, BLOCK_OH: tl.constexpr, BLOCK_OW: tl.constexpr,
                 zero=0):
    """Image n and the (BLOCK_OH*BLOCK_OW,) row/column indices of program pid's 2-D tile;
    `zero`: 0, added to the index range (the block kernel's persistent loop passes one the
    compiler cannot hoist: inverted_residual._ir_tile)."""
    n = pid // TILES_HW
    t = pid % TILES_HW
    p = tl.arange(0, BLOCK_OH * BLOCK_OW) + zero
    rows = (t // TILES_W) * BLOCK_OH + p // BLOCK_OW
    cols = (t % TILES_W) * BLOCK_OW + p % BLOCK_OW
    return n, rows, cols


@triton.jit
def tap_pixels(rows, cols, H, W, sxh, sxw, PAD, i, j,
               STRIDE: tl.constexpr, DILATION: tl.constexpr):
    """Offsets (within an image of x) of the input pixel that tap (i, j) of each output pixel
    of the tile reads, and whether that pixel is inside the image (else it is padding)."""
    ih = rows * STRIDE - PAD + i * DILATION
    iw = cols * STRIDE - PAD + j * DILATION
    inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    return ih * sxh + iw * sxw, inside


@triton.jit
def window_tap(x_base, rows, cols, c, c_mask, H, W, sxc, sxh, sxw, PAD, i, j,
               STRIDE: tl.constexpr, DILATION: tl.constexpr):
    """x at tap (i, j) of each output pixel of the tile, zero in the padding, as fp32."""
    pix, inside = tap_pixels(rows, cols, H, W, sxh, sxw, PAD, i, j, STRIDE, DILATION)
    ptrs = x_base + pix[:, None] + (c * sxc)[None, :]
    return tl.load(ptrs, mask=inside[:, None] & c_mask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _window(x_base, w_ptr, rows, cols, c, c_mask, C, H, W, sxc, sxh, sxw, PAD,
            K: tl.constexpr, STRIDE: tl.constexpr, DILATION: tl.constexpr,
            BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """z[p, c] = sum_{i,j} x[ih(p, i), iw(p, j), c] * w[i*K + j, c], accumulated in fp32
    (w tap-major)."""
    z = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for i in range(K):  # run-time loop: see the module docstring
        for j in range(K):
            xv = window_tap(x_base, rows, cols, c, c_mask, H, W, sxc, sxh, sxw, PAD, i, j,
                            STRIDE, DILATION)
            wv = tl.load(w_ptr + (i * K + j) * C + c, mask=c_mask, other=0.0)
            z += xv * wv.to(tl.float32)[None, :]
    return z


# Forward, for each image n, output pixel (oh, ow) and channel c:
#   ih(oh, i) = oh*STRIDE - PAD + i*DILATION, iw(ow, j) likewise (x is 0 outside the image)
#   z = sum_{i,j < K} x[n, c, ih, iw] * w[c, 0, i, j]         (fp32 accumulation)
#   y[n, c, oh, ow] = act(z * scale[c] + shift[c])            (stored in x's dtype)
@triton.jit
def dw_forward_kernel(
    x_ptr,      # input (N, C, H, W), any strides
    w_ptr,      # weight, tap-major (K*K, C) contiguous: w[i*K + j, c] = weight[c, 0, i, j]
    scale_ptr,  # (C,) fp32 folded-BN scale
    shift_ptr,  # (C,) fp32 folded-BN shift
    y_ptr,      # output (N, C, OH, OW), any strides, x's dtype
    C, H, W, OH, OW,          # channels (/ VEC), input and output spatial sizes
    sxn, sxc, sxh, sxw,       # strides of x, in elements (sxh, sxw / VEC)
    syn, syc, syh, syw,       # strides of y, in elements (syh, syw / VEC)
    PAD,                      # zero padding on each side
    TILES_W, TILES_HW,        # spatial tiles per output row of tiles / per image
    K: tl.constexpr,          # window size
    STRIDE: tl.constexpr,     # convolution stride
    DILATION: tl.constexpr,   # window dilation
    ACT: tl.constexpr,        # activation name
    BLOCK_OH: tl.constexpr,   # output rows per tile
    BLOCK_OW: tl.constexpr,   # output columns per tile
    BLOCK_C: tl.constexpr,    # channels per program (innermost, vectorised for NHWC)
    INT64: tl.constexpr,      # offsets within an image in int64 (an image of >= 2**31 elements)
    VEC: tl.constexpr,        # C and the row/column strides are multiples of VEC, passed / VEC
):
    C = C * VEC
    sxc, sxh, sxw = as_offset(sxc, INT64), vec_int(sxh, VEC, INT64), vec_int(sxw, VEC, INT64)
    syc, syh, syw = as_offset(syc, INT64), vec_int(syh, VEC, INT64), vec_int(syw, VEC, INT64)
    n, rows, cols = spatial_tile(tl.program_id(0), TILES_W, TILES_HW, BLOCK_OH, BLOCK_OW)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    x_base = x_ptr + n.to(tl.int64) * sxn
    z = _window(x_base, w_ptr, rows, cols, c, c_mask, C, H, W, sxc, sxh, sxw, PAD,
                K, STRIDE, DILATION, BLOCK_OH * BLOCK_OW, BLOCK_C)
    scale = tl.load(scale_ptr + c, mask=c_mask, other=0.0)
    shift = tl.load(shift_ptr + c, mask=c_mask, other=0.0)
    y = activation(z * scale[None, :] + shift[None, :], ACT)
    out = (rows < OH) & (cols < OW)
    ptrs = y_ptr + n.to(tl.int64) * syn + (rows * syh + cols * syw)[:, None] + (c * syc)[None, :]
    tl.store(ptrs, y.to(y_ptr.dtype.element_ty), mask=out[:, None] & c_mask[None, :])


# Backward, part 1 (one program per output tile, like the forward). With u = z*scale + shift
# recomputed from x, and g the incoming gradient of y:
#   g_u = g * act'(u)                 -> grad_shift[c] = sum g_u,  grad_scale[c] = sum g_u * z
#   g_z = g_u * scale                 -> stored (fp32) for the grad-input kernel
#   grad_w[c, i, j] = sum_{n, oh, ow} g_z * x[n, c, ih(oh, i), iw(ow, j)]
# Each program writes its partial sums to row pid of `partial` (KK + 2 rows of C: the KK taps,
# then scale, then shift); the launcher sums the rows, so the result is deterministic.
@triton.jit
def dw_backward_params_kernel(
    g_ptr,        # incoming gradient (N, C, OH, OW), any strides
    x_ptr,        # forward input (N, C, H, W), any strides
    w_ptr,        # weight, tap-major (K*K, C) contiguous
    scale_ptr,    # (C,) fp32
    shift_ptr,    # (C,) fp32
    gz_ptr,       # out: g_z (N, OH, OW, C) fp32, contiguous
    partial_ptr,  # out: (programs along axis 0, K*K + 2, C) fp32 partial sums
    C, H, W, OH, OW,          # C / VEC
    sgn, sgc, sgh, sgw,       # strides of g (sgh, sgw / VEC)
    sxn, sxc, sxh, sxw,       # strides of x (sxh, sxw / VEC)
    PAD, TILES_W, TILES_HW,
    K: tl.constexpr, STRIDE: tl.constexpr, DILATION: tl.constexpr, ACT: tl.constexpr,
    BLOCK_OH: tl.constexpr, BLOCK_OW: tl.constexpr, BLOCK_C: tl.constexpr, INT64: tl.constexpr,
    VEC: tl.constexpr,        # as in the forward
):
    C = C * VEC
    sgc, sgh, sgw = as_offset(sgc, INT64), vec_int(sgh, VEC, INT64), vec_int(sgw, VEC, INT64)
    sxc, sxh, sxw = as_offset(sxc, INT64), vec_int(sxh, VEC, INT64), vec_int(sxw, VEC, INT64)
    pid = tl.program_id(0)
    n, rows, cols = spatial_tile(pid, TILES_W, TILES_HW, BLOCK_OH, BLOCK_OW)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    out = ((rows < OH) & (cols < OW))[:, None] & c_mask[None, :]
    # The tile's rows and columns past the output map read no x (a row or column index this
    # negative puts every tap above or left of the image): they may reach pixels no output
    # reads, and a non-finite one there would enter the parameter sums as Inf * 0 = NaN.
    rows = tl.where(rows < OH, rows, -K * DILATION)
    cols = tl.where(cols < OW, cols, -K * DILATION)
    x_base = x_ptr + n.to(tl.int64) * sxn
    z = _window(x_base, w_ptr, rows, cols, c, c_mask, C, H, W, sxc, sxh, sxw, PAD,
                K, STRIDE, DILATION, BLOCK_OH * BLOCK_OW, BLOCK_C)
    scale = tl.load(scale_ptr + c, mask=c_mask, other=0.0)
    shift = tl.load(shift_ptr + c, mask=c_mask, other=0.0)
    g = tl.load(g_ptr + n.to(tl.int64) * sgn + (rows * sgh + cols * sgw)[:, None]
                + (c * sgc)[None, :], mask=out, other=0.0).to(tl.float32)
    g_u = activation_backward(g, z * scale[None, :] + shift[None, :], ACT)  # 0 off the map
    g_z = g_u * scale[None, :]
    gz_rows = (n.to(tl.int64) * OH + rows) * OW + cols
    tl.store(gz_ptr + gz_rows[:, None] * C + c[None, :], g_z, mask=out)
    row = partial_ptr + pid.to(tl.int64) * ((K * K + 2) * C) + c
    for i in range(K):  # run-time loop: see the module docstring
        for j in range(K):
            xv = window_tap(x_base, rows, cols, c, c_mask, H, W, sxc, sxh, sxw, PAD, i, j,
                            STRIDE, DILATION)
            tl.store(row + (i * K + j) * C, tl.sum(g_z * xv, axis=0), mask=c_mask)
    tl.store(row + (K * K) * C, tl.sum(g_u * z, axis=0), mask=c_mask)
    tl.store(row + (K * K + 1) * C, tl.sum(g_u, axis=0), mask=c_mask)


# Backward, part 2 (one program per INPUT tile): every output pixel that tap (i, j) reads from
# input pixel (ih, iw) sends back g_z * w there:
#   oh = (ih + PAD - i*DILATION) / STRIDE, kept only when that is a whole number in [0, OH)
#   grad_x[n, c, ih, iw] = sum_{i,j} g_z[n, oh, ow, c] * w[c, 0, i, j]
@triton.jit
def dw_backward_input_kernel(
    gz_ptr,   # g_z (N, OH, OW, C) fp32, contiguous (from dw_backward_params_kernel)
    w_ptr,    # weight, tap-major (K*K, C) contiguous
    gx_ptr,   # out: grad of x (N, C, H, W), any strides, x's dtype
    C, H, W, OH, OW,          # C / VEC
    sgxn, sgxc, sgxh, sgxw,   # strides of grad_x (sgxh, sgxw / VEC)
    PAD, TILES_W, TILES_HW,   # tiles now cover the INPUT map (H, W)
    K: tl.constexpr, STRIDE: tl.constexpr, DILATION: tl.constexpr,
    BLOCK_OH: tl.constexpr, BLOCK_OW: tl.constexpr, BLOCK_C: tl.constexpr, INT64: tl.constexpr,
    VEC: tl.constexpr,        # as in the forward
):
    C = C * VEC
    sgxc, sgxh, sgxw = as_offset(sgxc, INT64), vec_int(sgxh, VEC, INT64), vec_int(sgxw, VEC,
                                                                                  INT64)
    n, ih, iw = spatial_tile(tl.program_id(0), TILES_W, TILES_HW, BLOCK_OH, BLOCK_OW)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    acc = tl.zeros((BLOCK_OH * BLOCK_OW, BLOCK_C), tl.float32)
    for i in range(K):  # run-time loop: see the module docstring
        # Shift by STRIDE*DILATION*K first so the numerator is never negative (// and % of
        # negative ints differ between C and Python); it cancels out of oh below.
        num_h = ih + PAD - i * DILATION + STRIDE * DILATION * K
        oh = num_h // STRIDE - DILATION * K
        ok_h = (num_h % STRIDE == 0) & (oh >= 0) & (oh < OH)
        for j in range(K):
            num_w = iw + PAD - j * DILATION + STRIDE * DILATION * K
            ow = num_w // STRIDE - DILATION * K
            ok = ok_h & (num_w % STRIDE == 0) & (ow >= 0) & (ow < OW)
            gz_rows = (n.to(tl.int64) * OH + oh) * OW + ow
            gz = tl.load(gz_ptr + gz_rows[:, None] * C + c[None, :],
                         mask=ok[:, None] & c_mask[None, :], other=0.0)
            wv = tl.load(w_ptr + (i * K + j) * C + c, mask=c_mask, other=0.0)
            acc += gz * wv.to(tl.float32)[None, :]
    inside = (ih < H) & (iw < W)
    ptrs = gx_ptr + n.to(tl.int64) * sgxn + (ih * sgxh + iw * sgxw)[:, None] + (c * sgxc)[None, :]
    tl.store(ptrs, acc.to(gx_ptr.dtype.element_ty), mask=inside[:, None] & c_mask[None, :])


def handled(x, weight):
    """Whether these kernels take the call: fp32/fp16/bf16 and channel multiplier 1."""
    return x.dtype != torch.float64 and weight.shape[0] == x.shape[1]


def _grid(n, h, w, channels, cfg):
    block_h, block_w, block_c, _ = cfg
    tiles_w = triton.cdiv(w, block_w)
    tiles_hw = triton.cdiv(h, block_h) * tiles_w
    return (n * tiles_hw, triton.cdiv(channels, block_c)), tiles_w, tiles_hw


def forward(x, weight, scale, shift, stride, padding, dilation, act, gpu_tiles=False):
    """y = act(dwconv(x) * scale + shift). gpu_tiles: launch a GPU tile config even under the
    interpreter (on a GPU it always is one)."""
    n, c, h, w = x.shape
    k = weight.shape[-1]
    oh, ow = (conv_output_size(s, k, stride, padding, dilation) for s in (h, w))
    y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device,
                    memory_format=output_memory_format(x))
    cfg = pick_config(c, x.element_size(), oh, ow, gpu_tiles, n, multiprocessors(x.device))
    grid, tiles_w, tiles_hw = _grid(n, oh, ow, c, cfg)
    vec = vector_width(c, *row_strides(x, y))
    with on_device_of(x):
        dw_forward_kernel[grid](
            x, tap_major(weight), scale, shift, y, c // vec, h, w, oh, ow, *vec_strides(x, vec),
            *vec_strides(y, vec), padding, tiles_w, tiles_hw, K=k, STRIDE=stride,
            DILATION=dilation, ACT=act, BLOCK_OH=cfg[0], BLOCK_OW=cfg[1], BLOCK_C=cfg[2],
            INT64=needs_int64(x, y), VEC=vec, num_warps=cfg[3], maxnreg=MAXNREG)
    return y


def backward(grad, x, weight, scale, shift, stride, padding, dilation, act, gpu_tiles=False):
    """[grad_x, grad_weight, grad_scale, grad_shift]; gpu_tiles as in forward."""
    n, c, h, w = x.shape
    k = weight.shape[-1]
    oh, ow = grad.shape[2:]
    taps = tap_major(weight)
    grad_x = torch.empty_like(x, memory_format=output_memory_format(x))
    int64 = needs_int64(grad, x, grad_x)  # g_z and partial are int64-indexed on every path
    vec = vector_width(c, *row_strides(grad, x))
    sms = multiprocessors(x.device)
    cfg = pick_config(c, x.element_size(), oh, ow, gpu_tiles, n, sms)
    grid, tiles_w, tiles_hw = _grid(n, oh, ow, c, cfg)
    g_z = torch.empty((n, oh, ow, c), dtype=torch.float32, device=x.device)
    partial = torch.empty((grid[0], k * k + 2, c), dtype=torch.float32, device=x.device)
    with on_device_of(x):
        dw_backward_params_kernel[grid](
            grad, x, taps, scale, shift, g_z, partial, c // vec, h, w, oh, ow,
            *vec_strides(grad, vec), *vec_strides(x, vec), padding, tiles_w, tiles_hw, K=k,
            STRIDE=stride, DILATION=dilation, ACT=act, BLOCK_OH=cfg[0], BLOCK_OW=cfg[1],
            BLOCK_C=cfg[2], INT64=int64, VEC=vec, num_warps=cfg[3])
    sums = partial.sum(0)
    cfg = pick_config(c, x.element_size(), h, w, gpu_tiles, n, sms)
    grid, tiles_w, tiles_hw = _grid(n, h, w, c, cfg)
    vec = vector_width(c, *row_strides(grad_x))  # g_z is NHWC: channels contiguous
    with on_device_of(x):
        dw_backward_input_kernel[grid](
            g_z, taps, grad_x, c // vec, h, w, oh, ow, *vec_strides(grad_x, vec), padding,
            tiles_w, tiles_hw, K=k, STRIDE=stride, DILATION=dilation, BLOCK_OH=cfg[0],
            BLOCK_OW=cfg[1], BLOCK_C=cfg[2], INT64=int64, VEC=vec, num_warps=cfg[3],
            maxnreg=MAXNREG)
    # Copies, not views of `sums`: a custom op's outputs must not alias one another.
    grad_w = sums[:k * k].t().reshape(weight.shape).to(weight.dtype, copy=True)
    return [grad_x, grad_w, sums[k * k].clone(), sums[k * k + 1].clone()]
