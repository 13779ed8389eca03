"""The op contract every layer of fastdw shares: activation names, dtypes, layouts, the conv
output size, the residual rule and the named tensors of an inverted-residual block. Each fact
is defined here once; the public ops, their fake kernels, every backend and the modules use it.
"""
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

# The public ops, by the name they keep everywhere (fastdw.ops.<name>, the custom op
# fastdw::<name>, each backend's kernel function, the kill switch FASTDW_DISABLE_OPS).
OP_NAMES = ("dwconv_bn_act", "pwconv_bn_act", "inverted_residual")

# act name -> stock function. The names are the op contract; kernels implement the same math.
ACTIVATIONS = {
    "none": lambda t: t,
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "silu": F.silu,
}

# squeeze-excite gate name -> stock function: the gate of an inverted-residual block's SE,
# x * gate(fc2(se_act(fc1(avgpool(x))))). Its inner activation se_act is any name of
# ACTIVATIONS. MobileNetV3 is relu / hardsigmoid (the ops' defaults), EfficientNet silu / sigmoid.
SE_GATES = {
    "hardsigmoid": F.hardsigmoid,
    "sigmoid": torch.sigmoid,
}

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 inputs accumulate in fp32; fp32 and fp64 compute in their own precision."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """Outputs keep the input's layout: channels_last in, channels_last out; anything else NCHW.

    Real kernels and fake kernels both call this, so their output strides always agree.
    """
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# The largest int32: the ops refuse sizes and hyper-parameters above it, and kernels index in
# int32 up to it (beyond, the Triton kernels switch to int64 offsets).
INT32_MAX = 2**31 - 1


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one spatial axis (zero padding on both sides)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def same_padding(kernel: int, dilation: int = 1) -> int:
    """The padding that keeps a stride-1 output the input's size (odd kernels): the ops' default,
    and the inverted-residual block's depthwise padding."""
    return dilation * (kernel - 1) // 2


def adds_residual(stride: int, in_channels: int, out_channels: int) -> bool:
    """Whether a block's output can take its input as a residual: same shape in and out."""
    return stride == 1 and in_channels == out_channels


class BlockWeights(NamedTuple):
    """The tensors of one inverted-residual block, besides its input x, in the order of the
    fastdw::inverted_residual schema and of the C++ struct of csrc/cpu/block_weights.h (a test
    checks the two agree). 1x1 weights are 2-D (C_out, C_in) at the kernels; None marks an
    absent stage (no expansion, no squeeze-excite) or, at the public op, a unit scale / zero
    shift."""
    expand_w: Optional[torch.Tensor]       # (hidden, C_in): expand 1x1, None for no expansion
    expand_scale: Optional[torch.Tensor]   # (hidden,)
    expand_shift: Optional[torch.Tensor]   # (hidden,)
    dw_w: torch.Tensor                     # (hidden, 1, k, k): depthwise, k odd
    dw_scale: Optional[torch.Tensor]       # (hidden,)
    dw_shift: Optional[torch.Tensor]       # (hidden,)
    project_w: torch.Tensor                # (C_out, hidden): project 1x1
    project_scale: Optional[torch.Tensor]  # (C_out,)
    project_shift: Optional[torch.Tensor]  # (C_out,)
    se_w1: Optional[torch.Tensor]          # (S, hidden): squeeze-excite, all four or none
    se_b1: Optional[torch.Tensor]          # (S,)
    se_w2: Optional[torch.Tensor]          # (hidden, S)
    se_b2: Optional[torch.Tensor]          # (hidden,)


# The entries a kernel may find None (the others are always tensors at the kernels).
BLOCK_OPTIONAL = frozenset(("expand_w", "expand_scale", "expand_shift", "se_w1", "se_b1",
                            "se_w2", "se_b2"))
