"""The cpp backend: fastdw's C++ CPU kernels (csrc/cpu, built into fastdw._C ahead of time or
on first use: fastdw/kernels/cpp_build.py).

The kernels are ops of namespace fastdw_cpp (the public "fastdw" namespace belongs to the
Python custom ops in fastdw.ops). This module is the only Python that names them: the backend
functions below (the kernel contract of fastdw.kernels.reference), try_kernel and plain_float32
for the ops' direct route (fastdw.ops.dispatch), new_program for the models' eval program, and
the C version of the eval caches' stamp check. Calls these kernels do not cover go to the
reference backend, so every call the public ops accept runs.
"""
import torch

from fastdw import torch_internals
from fastdw.contract import OP_NAMES
from fastdw.kernels import cpp_build, reference

try:  # registers torch.ops.fastdw_cpp and torch.classes.fastdw_cpp
    import fastdw._C as _extension
    _HOW_LOADED = "built ahead of time"
except ImportError as missing:  # e.g. a plain `pip install -e .`: compile it now
    _extension, _HOW_LOADED = cpp_build.compile_instead(missing)

DEVICES = ("cpu",)
NOTES = (f"fastdw._C {_HOW_LOADED}; float32 (+ bfloat16 for dwconv_bn_act) in C++; float16, "
         f"float64, depthwise channel multiplier > 1 and all backward passes run on reference")


def unavailable():
    return None if _extension is not None else _HOW_LOADED


def capability():
    """The instruction set the kernels use here: "avx512", "avx2" or "baseline"."""
    return torch.ops.fastdw_cpp.capability()


def block_weight_names():
    """The C++ order of an inverted-residual block's tensors (csrc/cpu/block_weights.h)."""
    return list(torch.ops.fastdw_cpp.block_weight_names())


# fastdw.nn's stamp check in C (csrc/stamp.cpp), or None where the extension is not built.
stamp_unchanged = getattr(_extension, "stamp_unchanged", None)
# plain_float32(tensors, plain_types, grad_enabled): fastdw.ops.dispatch's test of a call's
# tensors for the direct route, in C (csrc/direct_call.cpp).
plain_float32 = getattr(_extension, "plain_float32", None)


# The kernels' one overload each, looked up once: calling an overload packet resolves the
# overload on every call.
_KERNELS = {name: getattr(torch.ops.fastdw_cpp, name).default for name in OP_NAMES
            if _extension is not None}


def try_kernel(name, *args):
    """torch.ops.fastdw_cpp.<name>(*args), or None when the kernel refuses the arguments (the
    caller then runs the op's Python checks, whose error names the bad argument)."""
    try:
        return _KERNELS[name](*args)
    except RuntimeError:
        return None


def new_program():
    """An empty torch.classes.fastdw_cpp.Program (csrc/cpu/program.cpp) to add steps to."""
    return torch.classes.fastdw_cpp.Program()


def dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act):
    if x.dtype not in (torch.float32, torch.bfloat16) or weight.shape[0] != x.shape[1]:
        return reference.dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act)
    return torch.ops.fastdw_cpp.dwconv_bn_act(x, weight, scale, shift, stride, padding,
                                              dilation, act)


def pwconv_bn_act(x, weight, scale, shift, act, residual):
    if x.dtype != torch.float32:
        return reference.pwconv_bn_act(x, weight, scale, shift, act, residual)
    return torch.ops.fastdw_cpp.pwconv_bn_act(x, weight, scale, shift, act, residual)


def inverted_residual(x, weights, stride, act, residual, se_act, se_gate):
    # The kernel takes the block's tensors as one Tensor?[] list, which functorch's generic
    # batching fallback cannot split and in which the dispatcher does not resolve lazily
    # negated or conjugated views: vmap runs on reference, and views are resolved here.
    if x.dtype != torch.float32 or torch_internals.functorch_transforms_active():
        return reference.inverted_residual(x, weights, stride, act, residual, se_act, se_gate)
    weights = [t.resolve_neg().resolve_conj() if t is not None else None for t in weights]
    return torch.ops.fastdw_cpp.inverted_residual(x, weights, stride, act, residual, se_act,
                                                  se_gate)
