"""1x1 convolution + folded BatchNorm + activation (+ residual) as one GEMM with tl.dot.

Pixels are the GEMM's M dimension (all images and positions, flattened), input channels K,
output channels N. Row addresses come from (image, row, column) and the tensor's strides, so
channels_last (K contiguous: vectorised loads), NCHW and non-contiguous inputs all run with no
copy. The same kernel is the project stage of a split inverted-residual block: its prologue then
multiplies the A tile by the block's squeeze-excite gate.

Vector width: Triton only knows an int argument is a multiple of 16 or not, so with channel
counts that are not (every V3 width, V2's 24) channels_last rows gave scalar loads and stores.
The launcher passes the channel counts and the image, row and column strides divided by
VEC_K (x's side: C_IN, x's strides) and VEC_N (C_OUT, the residual's and y's strides), the
largest powers of two up to 16 dividing them (_shared.vector_width); the kernel multiplies them
back by the constexprs, which tells the compiler they are multiples of VEC_K / VEC_N: on
channels_last tensors the A tile, weight and gate rows load as vectors of VEC_K channels, the
residual loads and y stores as vectors of VEC_N. (NCHW: channels are not contiguous, VEC is 1.)

NCHW: the A tile's channels are a whole image apart, and through the flat pixel index's
divmod by W the compiler cannot see that consecutive pixels are consecutive in memory, so it
put the threads of a warp along the channels and loaded scalars (fp16: 24 ld.global.b16 per K
step and thread, each lane in its own 32-byte sector; fp32: 4-byte cp.async; sm_80/sm_90
PTX). Where x's, the residual's and y's pixel rows are contiguous (per_image), the grid walks
(image, block of BLOCK_M pixels of it) instead (PER_IMAGE): the rows are image * stride + pixel,
the compiler puts the threads along the pixels (coalesced), and where H*W is a multiple of 16
(28x28, 56x56, 112x112) loads and stores 16-byte vectors as for channels_last (16-byte
cp.async, v4 stores). On 14x14 and 7x7 maps the loads stay scalar but coalesced. A pixel block
then never spans two images (at 7x7, 49 of 64 rows are used). Under the interpreter the
launcher keeps flat blocks (few programs) unless asked for the GPU's tiles. fastdw's modules
compute channels_last on CUDA all the same (fastdw.nn.layers.feature_layout): the cuda
backend's kernels need it, and channels_last vectors do not depend on H*W.

The flat pixel index is int32: a batch of more pixels launches in groups of whole images, and an
image of more goes to reference (handled). Offsets within an image are int32 unless an image of
a tensor reaches 2**31 elements (INT64: the strides, and so every offset, become int64).
"""
import torch
import triton
import triton.language as tl

from fastdw.contract import INT32_MAX, output_memory_format
from fastdw.kernels.triton._shared import (activation, as_offset, dot_operand, dot_precision,
                                           interpreting, maxnreg, needs_int64, on_device_of,
                                           vec_int)
from fastdw.kernels.triton._shared import vectorised as shared_vectorised

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps) on a GPU; resources.py compiles each of them.
GPU_CONFIGS = {"small_n": (64, 32, 32, 4), "mid_n": (64, 64, 32, 8), "wide_n": (64, 128, 32, 8)}
# Pixels one launch may cover: its flat pixel index, up to the pixels rounded up to whole
# BLOCK_M (at most 1024) blocks, stays an int32.
MAX_LAUNCH_PIXELS = INT32_MAX + 1 - 1024


def pick_config(m, c_in, c_out, gpu_tiles=False):
    """gpu_tiles: a GPU config even under the interpreter (on a GPU it always is one)."""
    if interpreting() and not gpu_tiles:  # few, large programs: ~35 ms each when interpreted
        return (min(triton.next_power_of_2(m), 1024),
                min(max(triton.next_power_of_2(c_out), 16), 256),
                min(max(triton.next_power_of_2(c_in), 16), 256), 4)
    if c_out <= 32:
        return GPU_CONFIGS["small_n"]
    return GPU_CONFIGS["mid_n" if c_out <= 64 else "wide_n"]


def dot_in_fp32(dtype):
    """Multiply bf16 operands as fp32 under the interpreter: Triton 3.8's interpreter computes
    tl.dot on bf16 operands wrongly. On a GPU bf16 goes to the tensor cores as bf16."""
    return dtype == torch.bfloat16 and interpreting()


@triton.jit
def pixel_rows(m, HW, W, sn, sh, sw):
    """Element offset of flat pixel index m = (n*H + h)*W + w in a tensor with these strides."""
    img = m // HW
    hw = m % HW
    return img.to(tl.int64) * sn + (hw // W) * sh + (hw % W) * sw


@triton.jit
def tile_rows(m, img, HW, W, sn, sh, sw, PER_IMAGE: tl.constexpr):
    """Offsets of the tile's pixels in a tensor with these strides: flat pixel index m of the
    launch, or (PER_IMAGE) pixel m of image img of a tensor whose pixel p of an image is at
    offset p (unit column stride, row stride W): img * sn + m, provably contiguous along m."""
    if PER_IMAGE:
        rows = img.to(tl.int64) * sn + m
    else:
        rows = pixel_rows(m, HW, W, sn, sh, sw)
    return rows


# For each pixel m = (n, h, w) and output channel o:
#   a[m, i]  = x[n, i, h, w] * gate[n, i]                (gate only when HAS_GATE)
#   y[n, o, h, w] = act(sum_i a[m, i] * w[o, i] * scale[o] + shift[o]) + residual[n, o, h, w]
# fp32 accumulation in tl.dot; fp32 operands are multiplied in IEEE fp32, or as TF32 when the
# user allows it (PRECISION, _shared.dot_precision).
@triton.jit
def pw_kernel(
    x_ptr,        # input (N, C_IN, H, W), any strides
    w_ptr,        # weight (C_OUT, C_IN), contiguous
    scale_ptr,    # (C_OUT,) fp32
    shift_ptr,    # (C_OUT,) fp32
    gate_ptr,     # (N, C_IN) fp32 squeeze-excite gate (read only when HAS_GATE)
    res_ptr,      # residual (N, C_OUT, H, W), any strides (read only when HAS_RES)
    y_ptr,        # output (N, C_OUT, H, W), any strides
    M, HW, W,                 # M: the launch's pixels (<= MAX_LAUNCH_PIXELS; PER_IMAGE: HW)
    C_IN, C_OUT,              # channels, / VEC_K and / VEC_N
    sxn, sxc, sxh, sxw,       # strides of x (sxn, sxh, sxw / VEC_K)
    srn, src, srh, srw,       # strides of the residual (srn, srh, srw / VEC_N)
    syn, syc, syh, syw,       # strides of y (syn, syh, syw / VEC_N)
    ACT: tl.constexpr,        # activation name
    HAS_GATE: tl.constexpr,   # multiply A by gate[n, i] in the prologue
    HAS_RES: tl.constexpr,    # add the residual after the activation
    DOT_FP32: tl.constexpr,   # cast operands to fp32 before tl.dot (bf16 under the interpreter)
    PRECISION: tl.constexpr,  # tl.dot input_precision: "ieee", or "tf32" (fp32, opt-in)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INT64: tl.constexpr,      # offsets within an image (and into the gate) in int64
    VEC_K: tl.constexpr,      # C_IN and x's image/row/column strides are multiples of VEC_K
    VEC_N: tl.constexpr,      # C_OUT and the residual's and y's are multiples of VEC_N
    PER_IMAGE: tl.constexpr,  # axis 0 walks (image, pixel block); pixel rows contiguous (NCHW)
):
    C_IN = C_IN * VEC_K
    C_OUT = C_OUT * VEC_N
    # Image strides in int64 (pixel_rows multiplies them by an int64 image index anyway): a
    # batch stride over 2**31 can arrive divided into an int32.
    sxn, srn, syn = vec_int(sxn, VEC_K, True), vec_int(srn, VEC_N, True), vec_int(syn, VEC_N, True)
    sxc, sxh, sxw = as_offset(sxc, INT64), vec_int(sxh, VEC_K, INT64), vec_int(sxw, VEC_K, INT64)
    src, srh, srw = as_offset(src, INT64), vec_int(srh, VEC_N, INT64), vec_int(srw, VEC_N, INT64)
    syc, syh, syw = as_offset(syc, INT64), vec_int(syh, VEC_N, INT64), vec_int(syw, VEC_N, INT64)
    if PER_IMAGE:  # M = HW: pixel blocks of one image each
        tiles = tl.cdiv(HW, BLOCK_M)
        img = tl.program_id(0) // tiles
        m = (tl.program_id(0) % tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
        images = tl.zeros((BLOCK_M,), tl.int32) + img
    else:
        img = 0
        m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        images = m // HW
    o = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = m < M
    o_mask = o < C_OUT
    x_rows = tile_rows(m, img, HW, W, sxn, sxh, sxw, PER_IMAGE)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, C_IN, BLOCK_K):
        i = k0 + tl.arange(0, BLOCK_K)
        i_mask = i < C_IN
        a = tl.load(x_ptr + x_rows[:, None] + (i * sxc)[None, :],
                    mask=m_mask[:, None] & i_mask[None, :], other=0.0)
        if HAS_GATE:
            gate = tl.load(gate_ptr + as_offset(images, INT64)[:, None] * C_IN + i[None, :],
                           mask=m_mask[:, None] & i_mask[None, :], other=0.0)
            a = (a.to(tl.float32) * gate).to(x_ptr.dtype.element_ty)
        b = tl.load(w_ptr + o[None, :] * C_IN + i[:, None],
                    mask=i_mask[:, None] & o_mask[None, :], other=0.0)
        acc = tl.dot(dot_operand(a, x_ptr, DOT_FP32), dot_operand(b, x_ptr, DOT_FP32), acc,
                     input_precision=PRECISION)
    scale = tl.load(scale_ptr + o, mask=o_mask, other=0.0)
    shift = tl.load(shift_ptr + o, mask=o_mask, other=0.0)
    y = activation(acc * scale[None, :] + shift[None, :], ACT)
    mask = m_mask[:, None] & o_mask[None, :]
    if HAS_RES:
        r_rows = tile_rows(m, img, HW, W, srn, srh, srw, PER_IMAGE)
        y += tl.load(res_ptr + r_rows[:, None] + (o * src)[None, :], mask=mask,
                     other=0.0).to(tl.float32)
    y_rows = tile_rows(m, img, HW, W, syn, syh, syw, PER_IMAGE)
    tl.store(y_ptr + y_rows[:, None] + (o * syc)[None, :], y.to(y_ptr.dtype.element_ty),
             mask=mask)


# The int arguments of pw_kernel each vector width divides: one home for the launcher and the
# static check (resources.py).
VEC_ARGS = {"VEC_K": ("C_IN", "sxn", "sxh", "sxw"),
            "VEC_N": ("C_OUT", "srn", "srh", "srw", "syn", "syh", "syw")}


def vectorised(args, per_image_grid=True):
    """pw_kernel's arguments {name: value} as the kernel takes them (the ints of VEC_ARGS divided
    by their vector width), and the layout constexprs: the vector widths {"VEC_K", "VEC_N"} and
    PER_IMAGE (per_image, unless per_image_grid is False)."""
    layout = {"PER_IMAGE": per_image_grid and per_image(args)}
    args = dict(args)
    if layout["PER_IMAGE"]:  # row and column strides unused: 0, so they limit no VEC
        args.update({f"s{t}{d}": 0 for t in "xry" for d in "hw"})
    for name, ints in VEC_ARGS.items():
        args, layout[name] = shared_vectorised(args, ints)
    return args, layout


def per_image(args):
    """Whether pw_kernel takes its PER_IMAGE path for these arguments (HW, W and the strides):
    x's channels are not contiguous (NCHW) and in x, the residual and y pixel p of an image is
    at offset p (unit column stride, row stride W). The flat pixel index's (h, w) = divmod(hw,
    W) hides that from the compiler, which then loads x's A tile element by element with the
    threads along the channels, HW apart; indexed by image and pixel, its rows are contiguous
    runs of pixels, and each warp's loads are coalesced along them."""
    w = args["W"]
    h = args["HW"] // w
    return args["sxc"] != 1 and all(
        (w == 1 or args[f"s{t}w"] == 1) and (h == 1 or args[f"s{t}h"] == w) for t in "xry")


def handled(x):
    """Not float64, nor an image of more pixels than one launch covers."""
    return x.dtype != torch.float64 and x.shape[2] * x.shape[3] <= MAX_LAUNCH_PIXELS


def _strides(prefix, t):
    """t's strides as pw_kernel's arguments s<prefix>n, s<prefix>c, s<prefix>h, s<prefix>w."""
    return {f"s{prefix}{d}": s for d, s in zip("nchw", t.stride())}


def forward(x, weight, scale, shift, act, residual, gate=None, out_like=None,
            gpu_tiles=False):
    """y = act(conv1x1(x * gate) * scale + shift) + residual. The output takes the dtype and
    memory format of `out_like` (default x): a block's project stage reads its NHWC hidden
    tensor but writes in the layout of the block's input. gpu_tiles: launch a GPU config even
    under the interpreter."""
    out_like = x if out_like is None else out_like
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    y = torch.empty((n, c_out, h, w), dtype=out_like.dtype, device=x.device,
                    memory_format=output_memory_format(out_like))
    block_m, block_n, block_k, warps = pick_config(n * h * w, c_in, c_out, gpu_tiles)
    res = y if residual is None else residual  # never read when HAS_RES is False
    gate_arg = scale if gate is None else gate  # never read when HAS_GATE is False
    int64 = needs_int64(x, res, y) or gate_arg.numel() > INT32_MAX
    weight = weight.contiguous()
    regs = maxnreg(x.element_size(), c_in, c_out, *x.stride(), *res.stride(), *y.stride())
    # Under the interpreter, without the GPU's tiles, few large programs: flat pixel blocks
    # spanning images (every program costs ~35 ms whatever its size).
    ints, layout = vectorised(dict(HW=h * w, W=w, C_IN=c_in, C_OUT=c_out, **_strides("x", x),
                                   **_strides("r", res), **_strides("y", y)),
                              per_image_grid=gpu_tiles or not interpreting())
    images = MAX_LAUNCH_PIXELS // max(1, h * w)  # per launch (handled() keeps it >= 1)
    for n0 in range(0, n, images):
        batch = slice(n0, n0 + images)
        count = min(images, n - n0)
        m = h * w if layout["PER_IMAGE"] else count * h * w
        blocks = count * triton.cdiv(m, block_m) if layout["PER_IMAGE"] else triton.cdiv(m, block_m)
        grid = (blocks, triton.cdiv(c_out, block_n))
        with on_device_of(x):
            pw_kernel[grid](
                x[batch], weight, scale, shift, gate_arg if gate is None else gate[batch],
                res[batch], y[batch], m, **ints, ACT=act, HAS_GATE=gate is not None,
                HAS_RES=residual is not None, DOT_FP32=dot_in_fp32(x.dtype),
                PRECISION=dot_precision(x.dtype), BLOCK_M=block_m, BLOCK_N=block_n,
                BLOCK_K=block_k, INT64=int64, **layout, num_warps=warps, maxnreg=regs)
    return y
