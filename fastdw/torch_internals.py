"""Every private torch API fastdw relies on, each behind one small function, so a torch upgrade
that moves one breaks here and in tests/test_torch_internals.py, not silently somewhere else.

fastdw reads them for one question: may a call skip the custom-op layer and run a kernel
directly, or is something (a mode, forward AD, a functorch transform, a global hook) watching?
It writes two: torch's global decomposition table (register_decomposition), and inductor's
lowering table, so that inductor keeps calling the ops that table decomposes.
"""
import importlib.abc
import importlib.util
import sys
import threading
import warnings

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import _decomp
from torch._library.utils import get_layout_constraint_tag
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
    kernel: same shapes, strides and dtype).

    Inductor calls an op it has no lowering for through a fallback it makes on first sight, but
    where the environment sets CI (GitHub Actions, GitLab, most CI services) it refuses to when
    the global table decomposes the op: a check meant for torch's own CI, which would break every
    torch.compile of a fastdw model there. So the fallback is made up front, the way inductor
    makes it, when inductor's lowering module loads (now, if it already has)."""
    _decomp.register_decomposition(op)(fn)
    _OPS_INDUCTOR_CALLS.append(op)
    lowering = sys.modules.get(_INDUCTOR_LOWERING)
    if lowering is not None:
        _let_inductor_call(lowering)
    elif not any(isinstance(f, _AfterInductorLoweringLoads) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterInductorLoweringLoads())


_INDUCTOR_LOWERING = "torch._inductor.lowering"
_OPS_INDUCTOR_CALLS = []


def _let_inductor_call(lowering):
    """The fallback inductor's GraphLowering.call_function makes for an op without a lowering,
    with the same layout constraint, minus the CI-only refusal. A torch that moved these
    helpers gets a warning, not a failure of every torch.compile in the process."""
    try:
        for op in _OPS_INDUCTOR_CALLS:
            if op not in lowering.lowerings:
                constraint = lowering.tag_to_layout_constraint(
                    get_layout_constraint_tag(op, with_default=True))
                lowering.make_fallback(op, layout_constraint=constraint, override_decomp=True)
    except Exception as err:  # whatever it is, inductor must keep working
        warnings.warn(f"fastdw could not give inductor its ops' fallbacks ({err!r}); "
                      f"torch.compile of fastdw ops may fail where the CI variable is set")


class _AfterInductorLoweringLoads(importlib.abc.MetaPathFinder):
    """Runs _let_inductor_call once inductor's lowering module has executed, without importing
    inductor (seconds) on `import fastdw`. Python has no post-import hook; this finder wraps the
    module's own loader, and steps out of sys.meta_path when that loader has run (a mere
    importlib.util.find_spec of the module also asks it, and loads nothing)."""

    def __init__(self):
        self._asking = threading.local()  # set while it asks the other finders itself

    def find_spec(self, fullname, path, target=None):
        if fullname != _INDUCTOR_LOWERING or getattr(self._asking, "now", False):
            return None
        self._asking.now = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._asking.now = False
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def execute_then_register(module):
            execute(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _let_inductor_call(module)

        spec.loader.exec_module = execute_then_register
        return spec
