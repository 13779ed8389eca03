"""Small facts about tensors and activations shared by every layer of fastdw."""
import torch
import torch.nn.functional as F

# act name -> stock function. The names are the op contract; kernels implement the same math.
ACTIVATIONS = {
    "none": lambda t: t,
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "silu": F.silu,
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
