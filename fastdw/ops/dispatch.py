"""The one route from an op call to a kernel. Every call reads straight down:

    1. cpp_direct(op, x, tensors, backend)?  run the C++ kernel at once (try_cpp); it checks every
       argument itself, and only a call it refuses goes on
    2. the op's Python checks: normalise the arguments, or raise an error naming the bad one
    3. backend.resolve: the backend for x's device
    4. run(): that backend's kernel, called directly where nothing could tell (unobserved), else
       through the op's torch.library custom op (autograd, torch.compile, modes, subclasses),
       or, where the custom op cannot carry the call (forward AD, functorch transforms, ONNX
       export), the reference backend's composite of stock ops

The public ops (fastdw/ops/<op>.py) take this route on every call. A BoundOp is an op with
everything but x fixed and validated once: fastdw.nn's modules hold one per fused layer and
take the same route, skipping what their binding already settled; the models' eval program
(fastdw.nn.program) reads a BoundOp's kernel arguments. Step 1 exists because at batch 1 the
Python checks and the custom-op layer cost as much as a small layer's C++ kernel
(bench/cpu_ops.py).
"""
import torch
from torch import nn

from fastdw import backend as _backend
from fastdw import torch_internals
from fastdw.ops import checks

# Tensor types that handle no op themselves (Parameter: no torch function either).
PLAIN_TYPES = frozenset((torch.Tensor, nn.Parameter))


def observed() -> bool:
    """True when something besides backward-mode autograd watches op calls: torch.compile or
    jit tracing, forward-mode AD (a dual level is open), or a __torch_function__ or
    __torch_dispatch__ mode (FakeTensorMode, FlopCounterMode, ...)."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch_internals.dual_level_open()
            or torch_internals.function_mode_watching()
            or torch_internals.dispatch_mode_active())


def plain(t) -> bool:
    """t is None or a tensor that is not a subclass handling ops itself."""
    return t is None or type(t) in PLAIN_TYPES


def plain_and_grad_free(tensors, dtype=None) -> bool:
    """Every entry None or a plain tensor (of `dtype`, if given) that autograd need not record,
    in one pass. The cpp backend's plain_float32 answers the same for float32 in C (at batch 1
    this check is a visible share of a small layer); this function is its specification."""
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (type(t) not in PLAIN_TYPES
                              or dtype is not None and t.dtype is not dtype
                              or grad and t.requires_grad):
            return False
    return True


def unobserved(tensors) -> bool:
    """True when calling an op's kernel on `tensors` directly is indistinguishable from calling
    its custom op: no autograd graph would be recorded, nothing is watching (observed()), and no
    tensor is a subclass."""
    return plain_and_grad_free(tensors) and not observed()


def cpp_direct(op, x, tensors=(), backend=None) -> bool:
    """The one test of "this call of op `op` may run its C++ kernel directly" (step 1), for x
    and the call's other tensors (None for an absent one): x a 4-D float32 CPU tensor, every
    tensor plain and float32, unobserved, no autocast, no functorch transform (vmap: the kernel
    route batches through the dispatcher), and the backend chosen for it is cpp. A BoundOp
    vets its own tensors once, when bound, and passes none here. op None stands for a program
    of several ops (the models' eval program), which the kill switch stops whatever op it names.

    The C++ entry points check every argument before touching memory (csrc/cpu/checks.h) and
    refuse every call the Python checks refuse, once the caller has checked the exact types of
    its int, bool and str options (torch.ops takes True for an int). A refused call pays for a
    C++ exception, so calls that are fine but need a cast (a float64 scale) do not come here."""
    if not (type(x) is torch.Tensor and x.is_cpu and x.dim() == 4 and not observed()
            and not torch.is_autocast_enabled("cpu")
            and not torch_internals.functorch_transforms_active()):
        return False
    try:
        if _backend.resolve(backend, "cpu", op) != "cpp":
            return False
    except (TypeError, ValueError, _backend.BackendUnavailableError):  # step 2 raises it
        return False
    if op is None and _backend.disabled_ops():
        return False
    in_c = _backend.module("cpp").plain_float32
    if in_c is None:  # a fastdw._C built before csrc/direct_call.cpp existed
        return plain_and_grad_free((x, *tensors), torch.float32)
    return in_c((x, *tensors), PLAIN_TYPES, torch.is_grad_enabled())


def try_cpp(name, x, *args):
    """Step 1 after cpp_direct(...) held: the cpp backend's kernel for op `name` on x and
    args, or None where it refuses them (fastdw.kernels.cpp.try_kernel)."""
    return _backend.module("cpp").try_kernel(name, x, *args)


def run_kernel(backend, name, *args):
    """Backend `backend`'s kernel for op `name` (or its backward, `<op>_backward`) on args, the
    first a tensor: x, or the gradient of the output. Every route ends here, calls recorded
    with their backend included (an exported program, a jit trace, an AOTInductor package,
    torch.ops.fastdw.* called by hand), so here the two rules that overrule the backend hold for
    all of them: a disabled op (the kill switch) and an empty batch (N = 0: the C++ kernels
    refuse it, and reference's stock ops return the empty output and zero weight gradients)
    run on reference. Under autocast the ops have already cast their inputs (checks.autocast);
    the kernel runs with autocast off, or the float32 math of a half-precision input
    (reference's fp32 accumulation) would be cast down again by the ATen ops it calls."""
    if backend != "reference" and (args[0].shape[0] == 0
                                   or name.removesuffix("_backward") in _backend.disabled_ops()):
        backend = "reference"
    kernel = _backend.kernel(backend, name)
    device = checks.autocast_device(args[0])
    if device is not None:
        with torch.autocast(device, enabled=False):
            return kernel(*args)
    return kernel(*args)


def composite_only(tensors) -> bool:
    """True where the op's custom op cannot carry a call that the reference backend's composite
    of stock ops can, so the op runs as that composite (fastdw.kernels.reference) instead:
      * functorch transforms (torch.func.grad, vjp, jacrev, jvp, hessian; vmap of a call that
        autograd records): torch.library runs a custom op's autograd as an autograd.Function
        without setup_context, which functorch refuses;
      * forward-mode AD (a dual tensor): the ops have no jvp formula, and the custom op would
        drop the tangents;
      * the TorchScript ONNX exporter (torch.onnx.export(dynamo=False)): the custom ops have no
        ONNX symbolic, and the exporter's trace of the composite is plain ONNX.
    Never under torch.compile, whose graphs record the custom op."""
    if torch.compiler.is_compiling():
        return False
    return (torch_internals.functorch_transforms_active()
            or (torch_internals.dual_level_open() and any(
                t is not None and torch.autograd.forward_ad.unpack_dual(t).tangent is not None
                for t in tensors))
            # the exporter runs a jit trace; only then is torch.onnx (imported lazily) asked
            or (torch.jit.is_tracing() and torch.onnx.is_in_onnx_export()))


def run(custom_op, name, tensors, args, backend, kernel_args=None):
    """Step 4: custom_op(*args, backend), which runs backend `backend`'s kernel for op `name`
    on kernel_args (default args); or that kernel called directly where nothing could tell the
    difference (unobserved(tensors)); or the reference kernel, a composite of stock ops, where
    the custom op cannot carry the call (composite_only(tensors)). run_kernel sends disabled
    ops and empty batches to reference."""
    kernel_args = args if kernel_args is None else kernel_args
    if unobserved(tensors):
        return run_kernel(backend, name, *kernel_args)
    if composite_only(tensors):
        return run_kernel("reference", name, *kernel_args)
    return custom_op(*args, backend)


def backward(name, grad, tensors, kernel_args, backward_op):
    """The gradients an op's autograd formula returns, one for each of `tensors` (its saved
    inputs, None for an absent one) that is not None: backward_op(), which calls the op's
    backward custom op; or, where autograd records the backward itself (create_graph=True turns
    grad mode on while a backward runs), the gradients of op `name`'s reference composite of
    stock ops on kernel_args, which autograd can differentiate again (the backward custom ops
    have no derivative, and neither has every aten backward op the reference backward uses,
    e.g. silu_backward)."""
    if not torch.is_grad_enabled():
        return backward_op()
    given = [t for t in tensors if t is not None]
    wanted = [t for t in given if t.requires_grad]
    if not wanted:
        return [None] * len(given)
    out = run_kernel("reference", name, *kernel_args)
    grads = iter(torch.autograd.grad(out, wanted, grad, create_graph=True, allow_unused=True))
    return [next(grads) if t.requires_grad else None for t in given]


class BoundOp:
    """An op with everything but x fixed, for inputs of `in_channels` channels: what a fused
    module calls per forward (made by fastdw.ops.bind).

    `route(x, *tensors, **options)` is the op (its public function, or for inverted_residual
    the function taking a BlockWeights); `cpp_args(in_channels, *tensors, **options)` gives the
    C++ kernel's arguments after x, or None where the cpp kernel does not take such a call. It
    is computed once, here, and only for plain float32 CPU tensors; a call then takes step 1
    with x alone unless autograd must record it, and anything else, or anything the kernel
    refuses, runs route. x's rank and channels are checked first, so that error names x, not a
    weight."""

    __slots__ = ("name", "route", "tensors", "options", "in_channels", "kernel_args",
                 "grad_tensors")

    def __init__(self, name, route, cpp_args, tensors, options, in_channels):
        self.name, self.route = name, route
        self.tensors, self.options = tuple(tensors), dict(options)
        self.in_channels = in_channels
        # The tensor arguments (a BlockWeights stands for its entries) must be tensors or None;
        # options may hold tensors too (squeeze-excite weights of the public op).
        given = [t for v in self.tensors for t in (v if isinstance(v, tuple) else (v,))]
        tensors = [t for t in (*given, *self.options.values()) if isinstance(t, torch.Tensor)]
        vetted = (all(t is None or isinstance(t, torch.Tensor) for t in given)
                  and all(type(t) in PLAIN_TYPES and t.dtype is torch.float32 and t.is_cpu
                          for t in tensors))
        self.kernel_args = cpp_args(in_channels, *self.tensors, **self.options) if vetted else None
        # Under grad mode a call must record autograd through any of these that requires grad
        # then (a module's parameters; requires_grad may change after binding).
        self.grad_tensors = tensors

    def __call__(self, x):
        if isinstance(x, torch.Tensor) and (x.dim() != 4 or x.shape[1] != self.in_channels):
            raise ValueError(f"x must have shape (N, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if (self.kernel_args is not None
                and not (torch.is_grad_enabled()
                         and any(t.requires_grad for t in self.grad_tensors))
                and cpp_direct(self.name, x)):
            out = try_cpp(self.name, x, *self.kernel_args)
            if out is not None:
                return out
        return self.route(x, *self.tensors, **self.options)
