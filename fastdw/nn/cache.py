"""A cache of everything an eval-mode forward computes that does not depend on its input,
valid while a stamp of the modules it read holds.

At batch 1 the Python around a kernel is a large share of a forward (folding is a handful of
tiny ops per BatchNorm; the public ops check up to 14 tensors and go through the custom-op
dispatcher), so a module's eval forward caches its bound op call (fastdw.ops.bind), BN already
folded, but only where nothing can observe it: no autograd (cached tensors carry no graph) and
not while torch.compile traces (the compiled graph folds itself).

Why a cached value cannot go stale. The stamp holds every module under the owner: its class,
its attributes (`train()`, `bn.eps = ...`) and children (`block.conv[1] = ...`), compared by
identity and ==; its parameters and buffers by identity, each with a view of it as it was (same
memory, dtype, sizes and strides, so `.data = ...` swaps, `.to()` and `.half()` are seen); and
a copy of the bytes of every tensor the value was derived from, compared with the tensor's bytes
on every call. No version counter is read: edits that move none (an optimizer with fused=True,
`bn.weight.data.mul_(2)`, memory shared through `.numpy()` or DLPack) are seen like
`bn.running_var.mul_(2)`. The copies are taken before the value is computed, and the value is
computed from them (value_of), not from the tensors: a tensor another thread writes meanwhile
could otherwise be folded from bytes that differ from the copy and then return to it. A tensor
whose memory the value holds itself (a conv weight, viewed by the bound op) is not copied: the
kernels read it on each call, and the C++ kernels' packed copies of it check its bytes
themselves (csrc/cpu/packed_weights.h). So the bytes compared on each call are those of the
folded BatchNorms, a few hundred KB for a whole MobileNet. Hooks and tensor-free leaves count
too: a fused module whose children do not fuse, or carry hooks, runs them as they are
(ConvBNAct.children_fuse, InvertedResidualBlock.stages_fuse).
"""
import contextlib
import contextvars
import itertools
import operator

import torch
from torch import nn

from fastdw import backend
from fastdw.ops import BoundOp

_dict_of = operator.attrgetter("__dict__")
_values = itertools.chain.from_iterable

# Module dicts a hook is added to in place (register_forward_hook and friends).
_hook_dicts = operator.attrgetter("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks",
                                  "_backward_hooks")


def take_stamp(owner, values=True):
    """What unchanged() compares. A cached value stands in for the forwards of every module
    under owner, so every module counts, tensor-free leaves too (`dropout.train()`,
    `relu6.max_val = ...`), with its hook dicts and the dicts of its classes (a forward replaced
    on a class).

    values: whether the value cached with the stamp may be computed from the tensors' values
    (taken before the value is computed: see holding()); else only their layout counts."""
    mods = list(owner.modules())
    classes = {c for m in mods for c in type(m).__mro__ if c not in (nn.Module, object)}
    # Children and hooks run in their dicts' order: those copies are item lists, compared in
    # order. Attributes and class dicts are copied as dicts, compared as ==, which ignores order.
    ordered = [d for m in mods for d in (m._modules, *_hook_dicts(m))]
    unordered = [m.__dict__ for m in mods] + [c.__dict__ for c in classes]  # (mappingproxies)
    dicts = ordered + unordered
    copies = [list(d.items()) for d in ordered] + [dict(d) for d in unordered]
    tensor_dicts = [d for m in mods for d in (m._parameters, m._buffers) if d]
    tensors = list(_values(map(dict.values, tensor_dicts)))
    live = [t for t in tensors if t is not None]
    valued = live if values else []
    return (mods, list(map(type, mods)), list(map(_dict_of, mods)), dicts,
            copies, tensor_dicts, tensors, live,
            [t.detach() for t in live], valued, list(map(_copy, valued)))


def holding(stamp, value, read):
    """stamp for a value computed under reading(stamp) after it was taken: without the byte
    copies of the tensors the value holds itself (the same memory: it reads them at each call)
    and did not read through value_of (`read`, from reading())."""
    held = {(t.data_ptr(), t.nbytes) for t in _tensors_in(value)}
    *head, valued, copies = stamp
    kept = [(t, c) for t, c in zip(valued, copies)
            if id(t) in read or (t.data_ptr(), t.nbytes) not in held]
    return (*head, [t for t, _ in kept], [c for _, c in kept])


# While a value is computed under a stamp (reading()): id(tensor) -> the copy of its bytes, and
# the ids value_of() has answered with a copy.
_copies = contextvars.ContextVar("fastdw_stamp_copies", default=None)


@contextlib.contextmanager
def reading(stamp):
    """Within the block, value_of(t) is the stamp's copy of t's bytes; yields the set of ids of
    the tensors read so (for holding())."""
    *_, valued, copies = stamp
    read = set()
    token = _copies.set(({id(t): c for t, c in zip(valued, copies)}, read))
    try:
        yield read
    finally:
        _copies.reset(token)


def value_of(t):
    """What a cached value computes from a tensor t of the modules (None stays None): the
    stamp's copy of t under reading(), else t."""
    state = _copies.get()
    if state is None or t is None:
        return t
    copies, read = state
    copy = copies.get(id(t))
    if copy is None:
        return t
    read.add(id(t))
    return copy


def _tensors_in(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, BoundOp):
        for part in (value.tensors, value.options, value.kernel_args):
            yield from _tensors_in(part)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors_in(v)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors_in(v)


def _copy(t):
    return t.detach().clone(memory_format=torch.contiguous_format)


def _bytes(t):
    return t.detach().reshape(-1).view(torch.uint8)


def _same_layout(t, view):
    return (t.data_ptr() == view.data_ptr() and t.dtype is view.dtype and t.shape == view.shape
            and t.stride() == view.stride())


def _same_bytes(t, copy):
    return t.dtype is copy.dtype and t.shape == copy.shape and torch.equal(_bytes(t),
                                                                           _bytes(copy))


def unchanged_py(stamp):
    """Whether nothing take_stamp() saw has changed. This runs on every cached call: fastdw._C
    has it in C (csrc/stamp.cpp, same answers, about half the time for a whole model), which
    `unchanged` is when built."""
    # Only C-level loops (map, ==). Classes, module dicts and tensors are compared by identity;
    # the live dicts with their copies (same objects compare equal by identity, without
    # calling their __eq__), last, as an attribute's == may run any code.
    (mods, types, module_dicts, dicts, copies, tensor_dicts, tensors, live, views, valued,
     value_copies) = stamp
    if not (all(map(operator.is_, map(type, mods), types))  # module.__class__ = ...
            and all(map(operator.is_, map(_dict_of, mods), module_dicts))):  # __dict__ = ...
        return False
    now = list(_values(map(dict.values, tensor_dicts)))
    if not (len(now) == len(tensors) and all(map(operator.is_, now, tensors))
            and len(views) == len(live) and len(value_copies) == len(valued)
            and all(map(_same_layout, live, views))
            and all(map(_same_bytes, valued, value_copies))):
        return False
    try:
        return all(map(_same_items, dicts, copies))
    except (RuntimeError, TypeError, ValueError):  # a changed attribute whose == raises
        return False  # (a tensor or an array, say): changed


def _same_items(d, copy):
    """d equals its copy from take_stamp(): in order where the copy is an item list."""
    return list(d.items()) == copy if type(copy) is list else d == copy


# In C where fastdw._C is built (the cpp backend loads), else in Python.
unchanged = getattr(backend.module("cpp"), "stamp_unchanged", None) or unchanged_py


class Entry(list):
    """A cache's [stamp, value] on its owner ("_fold_cache" in its __dict__), replaced in place
    (one atomic slice assignment, read with one unpack): owner's own __dict__ is part of the
    stamp. A list subclass, so that pytree walkers (torch.export) take it as one leaf rather
    than walking into the stamp, which holds that very __dict__."""


def entry_of(owner):
    entry = owner.__dict__.get("_fold_cache")
    if entry is None:
        entry = owner.__dict__["_fold_cache"] = Entry([None, None])
    return entry


def cached(owner: nn.Module, compute):
    """compute() (which reads only modules under `owner` and must not depend on the forward's
    input), cached on `owner` while nothing there changes; None results are not cached. Not
    while torch.compile or torch.jit traces: the graph folds itself, and a jit trace is checked
    against a second one, which must record the same ops."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.is_grad_enabled():
        return compute()
    entry = entry_of(owner)
    stamp, value = entry
    if stamp is not None and unchanged(stamp):
        return value
    stamp = take_stamp(owner)
    with reading(stamp) as read:
        value = compute()
    entry[:] = (holding(stamp, value, read), value) if value is not None else (None, None)
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

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling any: fail here with
        # what to use, not deep inside TorchScript's compile of the cache or torch.fx.
        raise RuntimeError(
            f"torch.jit.script cannot compile fastdw's {type(self).__name__} (its forward uses "
            f"Python that TorchScript does not support); use torch.jit.trace(model, "
            f"example_inputs), torch.export.export or torch.compile instead")

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        entry = self.__dict__.get("_fold_cache")
        if entry is not None and entry[0] is not None and not unchanged(entry[0]):
            entry[:] = (None, None)
        return module
