"""fold_bn: an eval-mode BatchNorm as the per-channel (scale, shift) the fused ops take."""
import torch

from fastdw.contract import compute_dtype
from fastdw.torch_internals import BatchNormBase


def fold_bn(bn: BatchNormBase):
    """(scale, shift) of an eval-mode BatchNorm: y = x * scale + shift with its running stats,
    in fp32 for a half-precision BatchNorm (fp64 for fp64)."""
    if not isinstance(bn, BatchNormBase):
        raise TypeError(f"bn must be a BatchNorm module, got {type(bn).__name__}")
    if bn.running_var is None:
        raise ValueError("bn has no running statistics (track_running_stats=False) to fold")
    return fold_tensors(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)


def fold_tensors(weight, bias, running_mean, running_var, eps):
    """fold_bn's arithmetic on a BatchNorm's tensors (weight and bias may be None)."""
    # In fp32 even for a half-precision model: rsqrt of a small variance in fp16 loses digits.
    dtype = compute_dtype(running_var.dtype)
    scale = torch.rsqrt(running_var.to(dtype) + eps)
    if weight is not None:
        scale = weight.to(dtype) * scale
    shift = -running_mean.to(dtype) * scale
    if bias is not None:
        shift = bias.to(dtype) + shift
    return scale, shift
