"""Glue shared by the op definitions: the output and gradient tensors fake kernels return."""
import torch

from fastdw.contract import output_memory_format


def empty_output(x, channels, height, width):
    """What an op returns for input x: x's dtype and device, x's memory format."""
    return torch.empty((x.shape[0], channels, height, width), dtype=x.dtype, device=x.device,
                       memory_format=output_memory_format(x))


def empty_grad(t):
    """A gradient for input t: t's shape and dtype, 4-D ones in t's memory format."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device,
                       memory_format=output_memory_format(t))


def as_grad(g, t):
    """Give a kernel's gradient the exact layout `empty_grad(t)` promises."""
    return g.to(t.dtype).contiguous(memory_format=output_memory_format(t))
