"""Public functional ops. Each is a torch.library custom op in namespace "fastdw" with a fake
kernel and autograd, so torch.compile and torch.export see one real op per call."""
import torch

from fastdw._common import ACTIVATIONS, compute_dtype
from fastdw.ops.dwconv_bn_act import dwconv_bn_act
from fastdw.ops.inverted_residual import inverted_residual
from fastdw.ops.pwconv_bn_act import pwconv_bn_act


def fold_bn(bn: torch.nn.modules.batchnorm._BatchNorm):
    """(scale, shift) of an eval-mode BatchNorm: y = x * scale + shift with its running stats,
    in fp32 for a half-precision BatchNorm (fp64 for fp64)."""
    if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"bn must be a BatchNorm module, got {type(bn).__name__}")
    if bn.running_var is None:
        raise ValueError("bn has no running statistics (track_running_stats=False) to fold")
    # In fp32 even for a half-precision model: rsqrt of a small variance in fp16 loses digits.
    dtype = compute_dtype(bn.running_var.dtype)
    scale = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
    if bn.weight is not None:
        scale = bn.weight.to(dtype) * scale
    shift = -bn.running_mean.to(dtype) * scale
    if bn.bias is not None:
        shift = bn.bias.to(dtype) + shift
    return scale, shift


__all__ = ["ACTIVATIONS", "dwconv_bn_act", "pwconv_bn_act", "inverted_residual", "fold_bn"]
