"""Every private torch API fastdw relies on, each behind one small function, so a torch upgrade
that moves one breaks here and in tests/test_torch_internals.py, not silently somewhere else.

fastdw reads them for one question: may a call skip the custom-op layer and run a kernel
directly, or is something (a mode, forward AD, a functorch transform, a global hook) watching?
It writes one: torch's global decomposition table (register_decomposition).
"""
import torch
import torch.autograd.forward_ad as _forward_ad
from torch import _decomp
from torch.nn.modules import module as _module
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import _get_current_function_mode_stack
from torch.utils._device import DeviceContext
from torch.utils._python_dispatch import TorchDispatchMode

# The base class of every BatchNorm (1d/2d/3d, lazy ones, SyncBatchNorm): what fold_bn folds.
BatchNormBase = _BatchNorm

# Re-exported for fastdw.perfmodel, which counts the aten ops a forward dispatches.
__all__ = ["BatchNormBase", "TorchDispatchMode", "mark_constant_for_compile",
           "function_mode_watching", "dispatch_mode_active", "dual_level_open",
           "functorch_transforms_active", "global_module_hooks", "register_decomposition"]


def mark_constant_for_compile(fn):
    """Tell torch.compile that fn's result is fixed for the life of the process, so it calls fn
    at trace time and bakes in the answer. torch.compiler.assume_constant_result sets this marker
    too, but calling it imports torch._dynamo (and triton) on `import fastdw`."""
    fn._dynamo_marked_constant = True
    return fn


def function_mode_watching() -> bool:
    """A __torch_function__ mode is active, other than a DeviceContext (torch.set_default_device /
    `with torch.device(...)`, which only changes where factory functions without a device
    allocate, and fastdw calls none)."""
    return torch._C._is_torch_function_mode_enabled() and any(
        not isinstance(mode, DeviceContext) for mode in _get_current_function_mode_stack())


def dispatch_mode_active() -> bool:
    """A __torch_dispatch__ mode is active (FakeTensorMode, FlopCounterMode, ...)."""
    return torch._C._len_torch_dispatch_stack() > 0


def dual_level_open() -> bool:
    """A forward-mode AD level is open (torch.func.jvp, torch.autograd.forward_ad.dual_level)."""
    return _forward_ad._current_level >= 0


def functorch_transforms_active() -> bool:
    """Inside torch.func.vmap / grad / functionalize."""
    return torch._C._are_functorch_transforms_active()


def global_module_hooks() -> bool:
    """A hook registered for every module (torch.nn.modules.module.register_module_forward_hook
    and friends) is set: a forward that skips the modules' own calls would skip it."""
    return bool(_module._global_forward_pre_hooks or _module._global_forward_hooks
                or _module._global_backward_pre_hooks or _module._global_backward_hooks)


def register_decomposition(op, fn):
    """Make fn, a function of stock ATen ops, op's entry in torch's global decomposition table.
    torch.onnx.export's default (dynamo) exporter lowers every op it cannot translate through
    that table; torch.compile and torch.export's default run_decompositions() do not read it, so
    their graphs keep op (fake tensors with symbolic sizes may run fn in place of op's fake
    kernel: same shapes, strides and dtype)."""
    _decomp.register_decomposition(op)(fn)
