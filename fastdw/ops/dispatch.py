"""How a public op reaches its backend kernel: through its torch.library custom op, or directly.

The custom op is what autograd, torch.compile, torch.export, jit tracing, tensor subclasses and
__torch_function__ / __torch_dispatch__ modes see. When none of them is involved, its body
(`backend.kernel(backend, op)(*args)`) can be called directly with the same result, skipping the
custom-op layer (dispatcher, a Python kernel, autograd wrapping), which at batch 1 costs about as
much as a small depthwise layer's C++ kernel. On the cpp backend the common call goes further and
runs its C++ kernel before the op's Python checks (cpp_first, try_cpp), which then run only
for calls the kernel refuses.
"""
import torch
import torch.autograd.forward_ad as _forward_ad
from torch import nn
from torch.overrides import _get_current_function_mode_stack
from torch.utils._device import DeviceContext

from fastdw import backend as _backend
from fastdw.ops import _checks

# Parameter handles no torch function itself; None stands for an absent optional tensor.
_PLAIN_TYPES = frozenset((torch.Tensor, nn.Parameter, type(None)))


def _function_mode_watching():
    # torch.set_default_device / `with torch.device(...)` push a DeviceContext mode; it only
    # changes where factory functions without a device allocate, which none of ours are.
    return torch._C._is_torch_function_mode_enabled() and any(
        not isinstance(mode, DeviceContext) for mode in _get_current_function_mode_stack())


def observed() -> bool:
    """True when something besides backward-mode autograd watches op calls: torch.compile or
    jit tracing, forward-mode AD (a dual level is open), or a __torch_function__ or
    __torch_dispatch__ mode (FakeTensorMode, FlopCounterMode, ...)."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or _forward_ad._current_level >= 0
            or _function_mode_watching()
            or torch._C._len_torch_dispatch_stack() > 0)


def plain(t) -> bool:
    """t is None or a tensor that is not a subclass handling ops itself."""
    return type(t) in _PLAIN_TYPES


def unobserved(tensors) -> bool:
    """True when calling an op's kernel on `tensors` directly is indistinguishable from calling
    its custom op: no autograd graph would be recorded, nothing is watching (observed()), and no
    tensor is a subclass."""
    if not _PLAIN_TYPES.issuperset(map(type, tensors)):
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return False
    return not observed()


def run_kernel(backend, name, *args):
    """Backend `backend`'s kernel for op `name` on args (the first a tensor). Under autocast
    the ops have already cast their inputs (_checks.autocast); the kernel runs with autocast
    off, or the float32 math of a half-precision input (reference's fp32 accumulation) would
    be cast down again by the ATen ops it calls."""
    kernel = _backend.kernel(backend, name)
    device = _checks.autocast_device(args[0])
    if device is not None:
        with torch.autocast(device, enabled=False):
            return kernel(*args)
    return kernel(*args)


def cpp_first(backend, tensors) -> bool:
    """True when a call on `tensors` (x first) may try the cpp kernel before any Python check
    (try_cpp): x a 4-D CPU tensor, every tensor plain and float32 (None for an absent optional
    one), unobserved, no autocast, and the backend chosen for it is cpp.

    The C++ entry points check every argument themselves before touching memory
    (csrc/cpu/checks.h) and refuse every call the ops' Python checks refuse, once the op has
    checked the exact types of its int, bool and str options (torch.ops takes True for an
    int). So the common call runs its kernel at once, and only a call the kernel refuses goes on
    to the Python checks, whose error names the bad argument. At batch 1 those checks cost as
    much as a small layer's kernel (bench/cpu_ops.py). A refused call pays for the C++
    exception, so calls that are fine but need a cast (a float64 scale) skip this."""
    x = tensors[0]
    if not (type(x) is torch.Tensor and x.is_cpu and x.dim() == 4 and unobserved(tensors)
            and all(t is None or t.dtype is torch.float32 for t in tensors)
            and not torch.is_autocast_enabled("cpu")):
        return False
    try:
        return _backend.resolve(backend, "cpu") == "cpp"
    except (TypeError, ValueError, _backend.BackendUnavailableError):  # the checks raise it
        return False


def try_cpp(name, args):
    """torch.ops.fastdw_cpp.<name>(*args), or None when the kernel refuses the arguments."""
    try:
        return getattr(torch.ops.fastdw_cpp, name)(*args)
    except RuntimeError:
        return None


def call(custom_op, name, tensors, args, backend):
    """custom_op(*args, backend), which runs backend `backend`'s kernel for op `name`, or that
    kernel called directly where nothing could tell the difference (unobserved(tensors)).
    Dual tensors (forward-mode AD: torch.func.jvp, torch.autograd.forward_ad) are refused: the
    ops have no forward-mode formula, and the custom op would silently drop their tangents."""
    if unobserved(tensors):
        return run_kernel(backend, name, *args)
    if _forward_ad._current_level >= 0 and any(
            t is not None and _forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        raise NotImplementedError(f"fastdw.ops.{name} has no forward-mode AD (jvp) formula; "
                                  "use backward-mode autograd (torch.autograd.grad, "
                                  "torch.func.vjp) instead")
    return custom_op(*args, backend)
