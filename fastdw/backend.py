"""Which backend runs an op call.

Precedence: the call's `backend=` argument > the innermost `with use_backend(name)` >
`set_backend(name)` > the FASTDW_BACKEND environment variable > "auto". "auto" takes the first
usable backend in AUTO_ORDER for the tensor's device, and reference runs on every device, so
"auto" never fails where reference works. `use_backend` is per thread and per asyncio task.
Under torch.compile the choice is made when a call is traced: use_backend()/set_backend()
changes trigger a recompile, but FASTDW_BACKEND is not guarded, so set it before compiling. Naming a backend that does not exist raises
ValueError; naming one that cannot run here raises BackendUnavailableError with the reason.

A backend is a module under fastdw.kernels that defines the kernel functions it implements
(names as in fastdw.kernels.reference; a missing function means reference runs that op),
`DEVICES` (device types it runs on; None for every device) and optionally `unavailable()` -> reason or None and
`NOTES` (limits it hands to reference, shown by info()). Modules load lazily, on first use.

The kill switch: ops named in FASTDW_DISABLE_OPS (comma-separated, read when fastdw is imported
and by set_disabled_ops(None)) or by set_disabled_ops() run on the reference backend, stock
PyTorch ops, whatever backend a call asks for; fused modules and the models' eval program follow,
and frozen models refuse to run.
"""
import contextlib
import contextvars
import ctypes
import importlib
import os

from fastdw.contract import OP_NAMES
from fastdw.kernels import reference
from fastdw.torch_internals import mark_constant_for_compile

BACKEND_MODULES = {
    "reference": "fastdw.kernels.reference",
    "cpp": "fastdw.kernels.cpp",
    "triton": "fastdw.kernels.triton",
    "cuda": "fastdw.kernels.cuda",
}
AUTO_ORDER = {"cuda": ("triton", "reference"), "cpu": ("cpp", "reference")}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run on this machine or device."""


_loaded = {}  # name -> (module or None, reason it is unusable or None)
_stack = contextvars.ContextVar("fastdw_backend_stack", default=())  # use_backend() nesting
_default = None


def _load(name):
    if name not in _loaded:
        try:
            module = importlib.import_module(BACKEND_MODULES[name])
            check = getattr(module, "unavailable", None)
            reason = check() if check else None
            if not hasattr(module, "DEVICES"):
                reason = f"{BACKEND_MODULES[name]} is not a backend yet (it defines no DEVICES)"
        except ImportError as err:  # an optional backend that is not built or not installed
            module = None
            reason = (f"not implemented in this version of fastdw ({err.name} does not exist)"
                      if err.name == BACKEND_MODULES[name]
                      else f"cannot import {BACKEND_MODULES[name]}: {err}")
        _loaded[name] = (module if reason is None else None, reason)
    return _loaded[name]


def _unusable_reason(name, device_type):
    module, reason = _load(name)
    if module is None:
        return reason
    if module.DEVICES is not None and device_type not in module.DEVICES:
        return f"runs on {', '.join(module.DEVICES)} tensors, not {device_type}"
    return None


# Availability is fixed for the life of the process, so torch.compile may call this at trace
# time and bake in the answer instead of tracing a lazy import.
mark_constant_for_compile(_unusable_reason)


def _check_name(name, origin):
    if not isinstance(name, str):
        raise TypeError(f"{origin}: a backend name must be a str, got {type(name).__name__}")
    if name != "auto" and name not in BACKEND_MODULES:
        raise ValueError(f"{origin}: unknown backend {name!r}; choose from "
                         f"{['auto', *BACKEND_MODULES]}")
    return name


_auto_choices = {}  # device type -> the backend "auto" picks there


def _auto(device_type):
    """The backend "auto" picks for a device type (fixed, like availability; marked constant
    for torch.compile below)."""
    name = _auto_choices.get(device_type)
    if name is None:
        name = _auto_choices[device_type] = next(
            (n for n in AUTO_ORDER.get(device_type, ())
             if _unusable_reason(n, device_type) is None), "reference")
    return name


mark_constant_for_compile(_auto)


def _c_getenv():
    """The C library's getenv, or None where ctypes cannot reach it. Called holding the GIL
    (PyDLL), as os.environ's writes call setenv, so the two never run at once."""
    try:
        getenv = ctypes.PyDLL(None).getenv
    except (OSError, TypeError, AttributeError):  # no process-wide symbol table (Windows)
        return None
    getenv.argtypes, getenv.restype = (ctypes.c_char_p,), ctypes.c_char_p
    return getenv


_getenv = _c_getenv()


_PROCESS_ENVIRON = os.environ


def _environment_choice():
    """FASTDW_BACKEND as os.environ holds it now, or "auto". Writes to os.environ reach the C
    library's environment (putenv / unsetenv), so getenv sees them; os.environ.get instead
    raises and catches a KeyError whenever the variable is unset, the common case, which at
    batch 1 is a visible share of a small op's call (bench/op_overhead.py). Where os.environ
    is not the process's (a test's mock.patch("os.environ", {...})), that mapping answers."""
    if _getenv is None or os.environ is not _PROCESS_ENVIRON:
        return os.environ.get("FASTDW_BACKEND", "auto")
    value = _getenv(b"FASTDW_BACKEND")
    return "auto" if value is None else os.fsdecode(value)


# Read when a call is traced, not guarded (see the module docstring).
mark_constant_for_compile(_environment_choice)


def _checked_op_names(names, origin):
    names = list(names)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{origin}: op names are str, got {name!r} ({type(name).__name__})")
    names = frozenset(names)
    unknown = sorted(names - set(OP_NAMES))
    if unknown:
        raise ValueError(f"{origin}: unknown op name(s) {unknown}; choose from {list(OP_NAMES)}")
    return names


def _environment_disabled_ops():
    value = os.environ.get("FASTDW_DISABLE_OPS", "")
    return _checked_op_names((n.strip() for n in value.split(",") if n.strip()),
                             "FASTDW_DISABLE_OPS")


_disabled = _environment_disabled_ops()


def set_disabled_ops(names):
    """The kill switch in Python: run the ops named (an iterable of op names, e.g.
    ["dwconv_bn_act"]; empty for none) on stock PyTorch from now on, in every thread. None reads
    FASTDW_DISABLE_OPS again and goes back to what it names."""
    global _disabled
    if isinstance(names, str):
        raise TypeError("set_disabled_ops takes an iterable of op names, e.g. "
                        f"[{names!r}], not a str")
    _disabled = (_environment_disabled_ops() if names is None
                 else _checked_op_names(names, "set_disabled_ops"))


def disabled_ops():
    """The names of the ops the kill switch sends to stock PyTorch (a frozenset)."""
    return _disabled


def resolve(requested, device_type, op=None):
    """The backend name a call of op `op` runs on (torch.compile guards on the choice): that of
    the precedence in the module docstring, or reference where the kill switch names the op."""
    if op in _disabled:
        if requested is not None:
            _check_name(requested, "backend")
        return "reference"
    if requested is not None:
        name = _check_name(requested, "backend")
    elif stack := _stack.get():
        name = stack[-1]
    elif _default is not None:
        name = _default
    else:
        name = _check_name(_environment_choice(), "FASTDW_BACKEND")
    if name == "auto":
        return _auto(device_type)
    reason = _unusable_reason(name, device_type)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} cannot run on {device_type}: {reason}")
    return name


def usable(device_type):
    """Names of the backends that can run ops on tensors of this device type."""
    return [name for name in BACKEND_MODULES if _unusable_reason(name, device_type) is None]


def module(name):
    """Backend `name`'s module (loaded on first use), or None where it cannot load."""
    return _load(name)[0]


def kernel(name, op):
    """The function of backend `name` that computes `op` (reference where it has none)."""
    module, _ = _load(name)
    return getattr(module, op, None) or getattr(reference, op)


@contextlib.contextmanager
def use_backend(name):
    """Run the fastdw ops called inside the block on backend `name` (or "auto")."""
    token = _stack.set(_stack.get() + (_check_name(name, "use_backend"),))
    try:
        yield
    finally:
        _stack.reset(token)


def set_backend(name):
    """Set the process-wide backend (None goes back to FASTDW_BACKEND / auto)."""
    global _default
    _default = None if name is None else _check_name(name, "set_backend")


def info():
    """{backend name: {"devices": [...], "usable": bool, "reason": str, "notes": str}}."""
    report = {}
    for name in BACKEND_MODULES:
        module, reason = _load(name)
        report[name] = {
            "devices": (["any"] if module.DEVICES is None else list(module.DEVICES))
                       if module else [],
            "usable": module is not None,
            "reason": reason or "",
            "notes": getattr(module, "NOTES", "") if module else "",
        }
    return report


def format_info():
    lines = [f"{'backend':<10} {'usable':<7} {'devices':<10} why not / notes"]
    for name, row in info().items():
        lines.append(f"{name:<10} {'yes' if row['usable'] else 'no':<7} "
                     f"{','.join(row['devices']) or '-':<10} {row['reason'] or row['notes']}")
    order = ", ".join(f"{dev}: {' > '.join(names)}" for dev, names in AUTO_ORDER.items())
    lines.append(f"auto picks the first usable backend per device ({order})")
    if _disabled:
        lines.append(f"disabled ops, run on reference (FASTDW_DISABLE_OPS / "
                     f"set_disabled_ops): {', '.join(sorted(_disabled))}")
    return "\n".join(lines)
