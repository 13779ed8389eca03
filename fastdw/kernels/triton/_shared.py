"""Pieces every fastdw Triton kernel shares: the activations and their derivatives (one jit
helper each, so every kernel computes exactly the same math), and launch-time facts."""
import contextlib
import os
import threading

import torch
import triton
import triton.language as tl

from fastdw.contract import INT32_MAX

# Registers per thread for the tl.dot kernels (pwconv, inverted residual), by x's element size.
# Left alone, ptxas caps them at 64-128 and spills a few loop-carried values (seen in the static
# check, resources.py). Above 128 one 8-warp block fits an SM's 64K registers where two would,
# so fp16/bf16 are capped at 128, where none of their configs spills; fp32 (tl.dot on CUDA
# cores, larger operand layouts) spills at 128 and takes 255.
MAXNREG = {2: 128, 4: 255}
# Without divisibility hints (a channel count or stride not a multiple of 16, as V3's widths and
# NCHW strides) the loads are scalar and their addresses take registers: fp16/bf16 spill at 128
# there (resources.py's worst cases), and take 255 too.
MAXNREG_UNALIGNED = 255


def maxnreg(element_size, *ints):
    """The register cap of a tl.dot kernel launch on x of this element size whose channel
    counts and strides are `ints`: MAXNREG when each is 1 or a multiple of 16 (Triton then
    specialises them as resources.py compiles them), else MAXNREG_UNALIGNED."""
    aligned = all(i == 1 or i % 16 == 0 for i in ints)
    return MAXNREG[element_size] if aligned else MAXNREG_UNALIGNED


def interpreting():
    """True when kernels run on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def image_extent(t):
    """The largest element offset within one image of t (its dims after the first, the batch):
    the offsets the kernels add to an image's int64 start."""
    if t.numel() == 0:
        return 0
    return sum((size - 1) * stride for size, stride in zip(t.shape[1:], t.stride()[1:]))


def needs_int64(*tensors):
    """Whether a kernel must compute offsets within one image in int64 (its INT64 constexpr)
    for these (N, ...) tensors: an image of one of them reaches 2**31 elements or more, where
    an int32 offset wraps around. An image's own start is int64 on every path, so a large
    batch of ordinary images keeps the cheaper int32 offsets."""
    return any(image_extent(t) > INT32_MAX for t in tensors)


def multiprocessors(device):
    """Streaming multiprocessors of device's GPU, or None off a GPU (the interpreter's CPU
    tensors): what a launcher weighs its number of programs against."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


def resident_programs(sms, regs, warps):
    """Programs of `warps` warps capped at `regs` registers per thread that a GPU of `sms` SMs
    (multiprocessors) surely runs at once (its SMs times the blocks one SM holds by registers:
    resources.register_blocks; a kernel that uses fewer registers than its cap fits more), or
    None off a GPU (sms None)."""
    if sms is None:
        return None
    from fastdw.kernels.triton.resources import register_blocks  # the offline tool: on a GPU only
    return sms * register_blocks(regs, warps)


def compiled_residency(kernel):
    """(programs the current CUDA device runs at once, bytes spilled) of a compiled kernel
    (JITFunction.warmup's): its SMs times the blocks one SM holds by the registers, warps and
    shared memory the kernel uses (resources.resident_blocks, with the device's own limits),
    and its local-memory spill."""
    from fastdw.kernels.triton.resources import resident_blocks
    kernel._init_handles()  # loads the kernel: its register and spill counts
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    blocks = resident_blocks(kernel.n_regs, kernel.metadata.num_warps, kernel.metadata.shared,
                             props.shared_memory_per_multiprocessor, props.regs_per_multiprocessor,
                             props.max_threads_per_multi_processor // props.warp_size)
    return props.multi_processor_count * blocks, kernel.n_spills


def vector_width(*ints):
    """VEC, the channel-vector width a kernel may assume: the largest power of two up to 16
    dividing each of ints, the channel count and the row and column strides of its tensors.
    Triton only knows an int argument is a multiple of 16 (or not), so 120 channels (V3) or 24
    (V2) gave scalar loads; a launcher passes those ints divided by VEC and the kernel multiplies
    them back by the constexpr (vec_int), which tells the compiler they are multiples of VEC: on
    channels_last tensors the loads of VEC consecutive channels become vectors."""
    vec = 16
    for value in ints:
        while value % vec:
            vec //= 2
    return vec


def vectorised(args, names):
    """(args with the ints `names` divided by VEC, VEC) for a kernel taking a VEC constexpr and
    those ints / VEC: VEC = vector_width of them, or 1 when that is 16, since Triton's own
    specialisation already marks an int that is a multiple of 16 and passing them whole keeps
    the aligned kernels' code as it was."""
    vec = vector_width(*(args[name] for name in names))
    vec = 1 if vec == 16 else vec
    return dict(args, **{name: args[name] // vec for name in names}), vec


def row_strides(*tensors):
    """The row and column strides of these (N, C, H, W) tensors (what VEC must divide)."""
    return [s for t in tensors for s in t.stride()[2:]]


def vec_strides(t, vec):
    """t's strides as the kernels with a VEC take them: row and column strides divided by vec."""
    sn, sc, sh, sw = t.stride()
    return sn, sc, sh // vec, sw // vec


def tap_major(weight):
    """A depthwise weight (C, 1, K, K) as the kernels read it: (K*K, C), contiguous, so one
    tap's weights for a block of channels are consecutive (a vector load; stored (C, K*K) they
    are K*K elements apart, one scalar load per channel). A copy of C*K*K elements per call."""
    return weight.reshape(weight.shape[0], -1).t().contiguous()


def on_device_of(t):
    """The context every launcher runs its kernels in: t's CUDA device made current. Triton
    launches on the current device, on torch's current stream of that device, so without it a
    tensor on cuda:1 with device 0 current would be handed to a kernel on the wrong GPU; with
    it the kernels run on t's device and that device's current stream, where torch's own ops
    on t would run. Under the interpreter it also holds _INTERPRETER_LOCK: the interpreter
    patches triton.language for the duration of a launch and restores it after, so launches
    from two threads at once broke each other (one raised mid-kernel)."""
    guard = torch.cuda.device_of(t)
    if not interpreting():
        return guard
    stack = contextlib.ExitStack()
    stack.enter_context(_INTERPRETER_LOCK)
    stack.enter_context(guard)
    return stack


# Serialises interpreted launches (on_device_of); reentrant, as a launcher's with-block may
# call another launcher.
_INTERPRETER_LOCK = threading.RLock()


def dot_precision(dtype):
    """tl.dot's input_precision for x of this dtype: "tf32" for fp32 when the user allows TF32
    for fp32 matmuls (torch.backends.cuda.matmul.allow_tf32, or set_float32_matmul_precision
    "high"), so the 1x1 GEMMs run on tensor cores with 10-bit-mantissa operands; else "ieee"
    (fp32 on CUDA cores; fp16/bf16 go to the tensor cores in their own type either way). An
    opt-in, off by default as torch's matmul flag is: torch.backends.cudnn.allow_tf32 is on
    by default, and following it would change fastdw's fp32 results without a request."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


@triton.jit
def _clamp_0_6(u):
    """min(max(u, 0), 6), NaN kept."""
    return tl.where(u < 0.0, 0.0, tl.where(u > 6.0, 6.0, u))


@triton.jit
def activation(u, ACT: tl.constexpr):
    """act(u) for the op contract's act names (fastdw.contract.ACTIVATIONS), in fp32, with
    torch's NaN semantics: a clamp selects its bound only where the comparison holds, so a NaN
    stays NaN (tl.maximum/minimum would return the bound on a GPU)."""
    if ACT == "relu":
        u = tl.where(u < 0.0, 0.0, u)
    elif ACT == "relu6":
        u = _clamp_0_6(u)
    elif ACT == "hardswish":
        u = u * _clamp_0_6(u + 3.0) * (1.0 / 6.0)
    elif ACT == "hardsigmoid":
        u = _clamp_0_6(u + 3.0) * (1.0 / 6.0)
    elif ACT == "silu":
        u = u * tl.sigmoid(u)
    return u


@triton.jit
def activation_grad(u, ACT: tl.constexpr):
    """d act(u) / du, with PyTorch's choice at the kinks (so gradients match autograd exactly):
    relu 0 at u=0; relu6/hardsigmoid 0 at both ends of the open linear range; hardswish
    (2u+3)/6 on the closed range [-3, 3]. At a NaN u, as autograd's vectorised CPU kernels
    (its scalar tails differ): relu passes the gradient on (1), relu6 and hardsigmoid stop it
    (0), hardswish and silu give NaN."""
    if ACT == "relu":
        d = tl.where(u <= 0.0, 0.0, 1.0)
    elif ACT == "relu6":
        d = tl.where((u > 0.0) & (u < 6.0), 1.0, 0.0)
    elif ACT == "hardswish":
        d = tl.where(u < -3.0, 0.0, tl.where(u <= 3.0, (2.0 * u + 3.0) * (1.0 / 6.0),
                                             tl.where(u > 3.0, 1.0, u)))
    elif ACT == "hardsigmoid":
        d = tl.where((u > -3.0) & (u < 3.0), 1.0 / 6.0, 0.0)
    elif ACT == "silu":
        s = tl.sigmoid(u)
        d = s * (1.0 + u * (1.0 - s))
    else:
        d = tl.full(u.shape, 1.0, tl.float32)
    return d


@triton.jit
def activation_backward(g, u, ACT: tl.constexpr):
    """g * act'(u), the gradient of u given g, the gradient of act(u), as autograd computes it:
    where an activation is flat by a comparison (relu, relu6 and hardsigmoid wherever their
    derivative is 0, hardswish below -3) torch selects 0 rather than multiplying, so an Inf or
    NaN g gives 0 there, not Inf * 0 = NaN."""
    d = activation_grad(u, ACT)
    if ACT == "hardswish":
        r = tl.where(u < -3.0, 0.0, g * d)  # (2u + 3) / 6 is 0 at u = -1.5: torch multiplies
    elif ACT == "relu" or ACT == "relu6" or ACT == "hardsigmoid":
        r = tl.where(d == 0.0, 0.0, g * d)
    else:
        r = g * d
    return r


@triton.jit
def as_offset(t, INT64: tl.constexpr):
    """An integer (a stride, or an index) in the type of offsets: int64 when INT64, else as it
    is (int32, cheaper). A kernel casts its strides at entry, so every index * stride product
    is int64 on the INT64 path while the index arithmetic (divisions) stays int32."""
    if INT64:
        t = tl.cast(t, tl.int64)  # tl.cast, not .to: a stride of 1 arrives as a constexpr
    return t


@triton.jit
def vec_int(t, VEC: tl.constexpr, INT64: tl.constexpr):
    """An int the launcher divided by VEC (vector_width), multiplied back, in the type of offsets:
    the product with the constexpr is what tells the compiler it is a multiple of VEC."""
    return as_offset(t, INT64) * VEC


@triton.jit
def dot_operand(t, like_ptr, DOT_FP32: tl.constexpr):
    """t in the dtype tl.dot multiplies: like_ptr's element type, or fp32 when DOT_FP32 (bf16
    under the interpreter, whose tl.dot is wrong on bf16 operands in Triton 3.8)."""
    if DOT_FP32:
        r = t.to(tl.float32)
    else:
        r = t.to(like_ptr.dtype.element_ty)
    return r
