"""BatchNorm folding for eval-mode forwards, with a cache keyed on the folded tensors' state.

Folding costs a handful of tiny ops per BatchNorm (~50 per model), which is noticeable at batch
1, so folded tensors are cached, but only where nothing can observe it: no autograd (cached
tensors carry no graph) and not while torch.compile traces (the compiled graph folds itself).
The key holds every input tensor by identity plus its version counter and data pointer, so
in-place edits (`bn.running_var.mul_(2)`, optimizer steps, load_state_dict), `.data = ...`
swaps and `.to()`/`.half()` all invalidate it. The one thing it cannot see is an in-place edit
through `.data` (`bn.weight.data.mul_(2)`): `.data` has its own version counter.
"""
import torch
from torch import nn

from fastdw import ops


def foldable(*bns: nn.BatchNorm2d) -> bool:
    """True when every BN normalises with running statistics, i.e. it can be folded."""
    return all(not bn.training and bn.running_var is not None for bn in bns)


def _stamp(tensors, bns):
    return (tuple(None if t is None else (t._version, t.data_ptr()) for t in tensors),
            tuple(bn.eps for bn in bns))


def cached(owner: nn.Module, bns, compute, *extra):
    """compute(): the folded tensors of `bns` (and of the `extra` tensors it reads), cached on
    `owner` (one entry per module: a module folds the same BNs every call)."""
    watched = [t for bn in bns for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)]
    watched += extra
    if (torch.compiler.is_compiling() or torch.is_grad_enabled()
            or any(t is not None and t.is_inference() for t in watched)):
        return compute()
    stamp = _stamp(watched, bns)
    entry = owner.__dict__.get("_fold_cache")
    if (entry is not None and len(entry[0]) == len(watched)
            and all(a is b for a, b in zip(entry[0], watched)) and entry[1] == stamp):
        return entry[2]
    value = compute()
    owner.__dict__["_fold_cache"] = (tuple(watched), stamp, value)
    return value


def fold_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """(weight, bias) of one conv equal to a bias-free conv followed by eval-mode bn."""
    scale, shift = ops.fold_bn(bn)
    weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
    return weight, shift.to(conv.weight.dtype)
