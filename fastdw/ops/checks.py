"""Argument checks shared by the public ops: every bad input becomes a TypeError or ValueError
that names the argument, before any kernel touches memory."""
import torch

from fastdw import contract
from fastdw.contract import ACTIVATIONS, FLOAT_DTYPES, INT32_MAX, compute_dtype


def activation(act, name="act", names=ACTIVATIONS):
    """An act name of the op contract: one of `names` (contract.ACTIVATIONS, or for a
    squeeze-excite gate contract.SE_GATES)."""
    if not isinstance(act, str) or act not in names:
        raise ValueError(f"{name} must be one of {sorted(names)}, got {act!r}")
    return act


def integer(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not minimum <= value <= INT32_MAX:
        raise ValueError(f"{name} must be >= {minimum} and < 2**31, got {value}")
    return value


def _tensor(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor "
                        f"(float32, float16, bfloat16 or float64), got {t.dtype}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}; "
                        f"call .to_dense() first")
    return t


def _same_device(t, name, x):
    if not (t.is_cpu and x.is_cpu) and t.device != x.device:  # is_cpu: no device objects
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")


_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def autocast_device(x):
    """x's device type if torch.autocast is on for it, else None (also for devices autocast
    does not know, such as meta, where asking would raise)."""
    if not isinstance(x, torch.Tensor):
        return None
    device = "cpu" if x.is_cpu else x.device.type
    if device not in ("cpu", "cuda") and not torch.amp.is_autocast_available(device):
        return None
    return device if torch.is_autocast_enabled(device) else None


def autocast(x, *tensors):
    """(x, *tensors), under torch.autocast for x's device type in the autocast dtype, as torch
    casts a convolution's input and weights there; otherwise, or for a float64 x, unchanged.
    Pass x and the conv weights (and a residual, which is cast too: the fused add runs in the
    autocast dtype, where stock `conv(x) + residual` would promote to float32); the ops
    compute per-channel vectors in float32 for half-precision x anyway."""
    device = autocast_device(x)
    if device is None or x.dtype not in _AUTOCAST_ELIGIBLE:  # float64 x: nothing is cast
        return (x, *tensors)
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in _AUTOCAST_ELIGIBLE
                 else t for t in (x, *tensors))


def feature_map(x, name="x"):
    """A 4-D (N, C, H, W) floating tensor, any strides; N may be 0 (an empty batch), as for
    stock convolutions, but not C, H or W."""
    _tensor(x, name)
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if 0 in x.shape[1:]:
        raise ValueError(f"{name} must have C, H and W >= 1, got shape {tuple(x.shape)}")
    return x


def like_input(t, name, x, shape):
    """A tensor with x's dtype and device and exactly `shape` (None entries match anything),
    not empty unless `shape` says so (a residual for an empty batch)."""
    _tensor(t, name)
    _same_device(t, name, x)
    if t.dtype != x.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but x has {x.dtype}")
    if t.dim() != len(shape) or [s for s, d in zip(shape, t.shape) if s is not None and s != d]:
        want = tuple("*" if s is None else s for s in shape)
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if t.numel() == 0 and 0 not in shape:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    return t


def one_by_one(w, name, x, c_in):
    """A 1x1 conv weight, (C_out, C_in, 1, 1) or (C_out, C_in), returned as 2-D."""
    if isinstance(w, torch.Tensor) and w.dim() == 4:
        like_input(w, name, x, (None, c_in, 1, 1))
        return w.flatten(1)
    return like_input(w, name, x, (None, c_in))


def matrix(weight):
    """A 1x1 conv weight as the (C_out, C_in) matrix the kernels take (the same view of it);
    any other weight as it is, for a kernel or one_by_one to reject."""
    return weight.flatten(1) if weight.dim() == 4 and weight.shape[2:] == (1, 1) else weight


def per_channel(t, name, x, length, default):
    """A 1-D per-channel vector (BN scale/shift, bias) in x's compute dtype and contiguous, as
    every backend's kernel reads it (a slice or a stride-0 expansion is copied); None ->
    `default`."""
    if t is None:
        return torch.full((length,), default, dtype=compute_dtype(x.dtype), device=x.device)
    _tensor(t, name)
    _same_device(t, name, x)
    if t.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(t.shape)}")
    dtype = compute_dtype(x.dtype)
    return (t if t.dtype is dtype else t.to(dtype)).contiguous()


def conv_output_size(size, kernel, stride, padding, dilation, name):
    """contract.conv_output_size, refused where it is below 1 or 2**31 and above."""
    out = contract.conv_output_size(size, kernel, stride, padding, dilation)
    if out < 1:
        raise ValueError(f"{name}: input of size {size} is too small for kernel {kernel} "
                         f"with padding {padding} and dilation {dilation}")
    if out > INT32_MAX:
        raise ValueError(f"{name}: padding {padding} makes an output of size {out} (>= 2**31)")
    return out
