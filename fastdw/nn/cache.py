"""A cache of everything an eval-mode forward computes that does not depend on its input,
valid while a stamp of the modules it read holds.

At batch 1 the Python around a kernel is a large share of a forward (folding is a handful of
tiny ops per BatchNorm; the public ops check up to 14 tensors and go through the custom-op
dispatcher), so a module's eval forward caches its bound op call (fastdw.ops.bind), BN already
folded, but only where nothing can observe it: no autograd (cached tensors carry no graph) and
not while torch.compile traces (the compiled graph folds itself). The cache holds a stamp of every module
under its owner: each module's attributes (`train()`, `bn.eps = ...`), children
(`block.conv[1] = ...`) and parameters and buffers by identity, plus each tensor's version
counter and data pointer, so in-place edits (`bn.running_var.mul_(2)`, most optimizer steps,
load_state_dict), `.data = ...` swaps, `module.__class__ = ...`, `module.__dict__ = ...` and
`.to()`/`.half()` all invalidate it. A cache that stands in for a whole forward (the models'
eval program, fastdw.models.eval_program) also stamps tensor-free leaves, hook dicts and the
dicts of the modules' classes. What it cannot see is an in-place edit that bumps no version counter:
through `.data` (`bn.weight.data.mul_(2)`: `.data` has its own counter), by an optimizer with
fused=True (its kernel writes the parameters without bumping theirs; the default and
foreach=True ones do) or through memory shared outside torch (`.numpy()`, DLPack); nor a
`.data = ...` swap for a view of the same memory with other strides (`w.data = w.data.t()`).
The C++ kernels' packed weights (csrc/cpu/packed_weights.cpp) are keyed on the same counters.
After such an edit, bump the counters, e.g. `model.load_state_dict(model.state_dict())`.
"""
import itertools
import operator

import torch
from torch import nn

from fastdw import backend

_version = operator.attrgetter("_version")
_dict_of = operator.attrgetter("__dict__")
_values = itertools.chain.from_iterable

# Module dicts a hook is added to in place (register_forward_hook and friends).
_hook_dicts = operator.attrgetter("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks",
                                  "_backward_hooks")


def take_stamp(owner, whole=False):
    """What unchanged() compares, or None when a tensor has no version counter (inference
    tensors), which makes caching unsafe.

    whole: for a value that stands in for owner's whole forward, so that no module under owner
    runs its own: then every module counts, tensor-free leaves too (`dropout.train()`), with its
    hook dicts and the dicts of its classes (a forward replaced on a class); otherwise the
    modules a fused call reads."""
    if whole:
        mods = list(owner.modules())
        classes = {c for m in mods for c in type(m).__mro__ if c not in (nn.Module, object)}
        dicts = [d for m in mods for d in (m.__dict__, m._modules, *_hook_dicts(m))]
        dicts += [c.__dict__ for c in classes]  # mappingproxies; == compares their dicts
    else:
        # Leaves without tensors (activations) are never read, and neither are empty dicts.
        mods = [m for m in owner.modules() if m._modules or m._parameters or m._buffers]
        dicts = [d for m in mods for d in (m.__dict__, m._modules)]
    tensor_dicts = [d for m in mods for d in (m._parameters, m._buffers) if d]
    tensors = list(_values(map(dict.values, tensor_dicts)))
    live = [t for t in tensors if t is not None]
    if any(map(torch.Tensor.is_inference, live)):
        return None
    return (mods, list(map(type, mods)), list(map(_dict_of, mods)), dicts,
            [dict(d) for d in dicts], tensor_dicts, tensors, live, list(map(_version, live)),
            list(map(torch.Tensor.data_ptr, live)))


def unchanged_py(stamp):
    """Whether nothing take_stamp() saw has changed. This runs on every cached call: fastdw._C
    has it in C (csrc/stamp.cpp, same answers, about half the time for a whole model), which
    `unchanged` is when built."""
    # Only C-level loops (map, ==). Classes, module dicts and tensors are compared by identity;
    # the live dicts with their copies (same objects compare equal by identity, without
    # calling their __eq__), last, as an attribute's == may run any code.
    (mods, types, module_dicts, dicts, copies, tensor_dicts, tensors, live, versions,
     pointers) = stamp
    if not (all(map(operator.is_, map(type, mods), types))  # module.__class__ = ...
            and all(map(operator.is_, map(_dict_of, mods), module_dicts))):  # __dict__ = ...
        return False
    now = list(_values(map(dict.values, tensor_dicts)))
    if not (len(now) == len(tensors) and all(map(operator.is_, now, tensors))
            and list(map(_version, live)) == versions
            and list(map(torch.Tensor.data_ptr, live)) == pointers):
        return False
    try:
        return dicts == copies
    except (RuntimeError, TypeError, ValueError):  # a changed attribute whose == raises
        return False  # (a tensor or an array, say): changed


# In C where fastdw._C is built (the cpp backend loads), else in Python.
unchanged = getattr(backend.module("cpp"), "stamp_unchanged", None) or unchanged_py


def cached(owner: nn.Module, compute):
    """compute() (which reads only modules under `owner` and must not depend on the forward's
    input), cached on `owner` while nothing there changes; None results are not cached."""
    if torch.compiler.is_compiling() or torch.is_grad_enabled():
        return compute()
    # [stamp, value], replaced in place (one atomic slice assignment, read with one unpack):
    # owner's own __dict__ is part of the stamp.
    entry = owner.__dict__.get("_fold_cache")
    if entry is None:
        entry = owner.__dict__["_fold_cache"] = [None, None]
    stamp, value = entry
    if stamp is not None and unchanged(stamp):
        return value
    stamp = take_stamp(owner)
    value = compute()
    entry[:] = (stamp, value) if value is not None else (None, None)
    return value


class CachedForward:
    """Base of modules whose forward uses cached() (or keeps a [stamp, value] entry of its own
    under "_fold_cache"): copies and pickles start with no cache, as its stamp refers to this
    very module's dicts, and `train()` and a `.to()`, `.double()` or the like that changes the
    module's tensors drop it at once rather than at the next forward (its tensors would stay
    alive until then)."""

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_fold_cache", None)
        return state

    def train(self, mode=True):
        # Nothing cached serves a training forward: free it while the model trains.
        if mode and "_fold_cache" in self.__dict__:
            self.__dict__["_fold_cache"][:] = (None, None)
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        entry = self.__dict__.get("_fold_cache")
        if entry is not None and entry[0] is not None and not unchanged(entry[0]):
            entry[:] = (None, None)
        return module
