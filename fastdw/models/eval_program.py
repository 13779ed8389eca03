"""fastdw.models' eval forward as one cached C++ program of the model as it is now.

Under no_grad in eval mode on the cpp backend, a fastdw MobileNet's forward runs the program
fastdw.nn.program builds from it (the same steps fastdw.nn.freeze snapshots), on views of the
model's own tensors, kept while a stamp of the whole model holds (fastdw.nn.cache.take_stamp:
what it holds, and why the program cannot go stale, is written there).
"""
import torch

from fastdw import torch_internals
from fastdw.nn.cache import entry_of, holding, reading, take_stamp, unchanged
from fastdw.nn.freeze import FrozenModel
from fastdw.nn.program import build, view
from fastdw.ops import dispatch


def eval_forward(model, x, forward_modules):
    """model(x) for fastdw.models' MobileNets, whose module-by-module forward is
    `forward_modules`. In eval mode under no_grad it runs a program of the model as it is now
    (not a snapshot: it views the model's tensors), built on the first call that finds the
    model unchanged since the one before, and kept while the stamp of the whole model holds
    (fastdw.nn.cache.take_stamp: edits to the values the program folded, by any means, swapped
    tensors, attributes, modules, mode changes, hooks and forwards replaced on a module or a
    class all drop it). So a model that changes on every call (BatchNorms adapting to test
    data, torch.func.functional_call between plain calls) costs a stamp per call, never a build.

    forward_modules runs instead in grad mode, training, under anything watching
    (fastdw.ops.dispatch.cpp_direct: modes, functorch, tracing), under autocast (the stem conv
    would run in its dtype, the program runs float32), for an x other than a plain non-empty
    4-D float32 CPU tensor with the model's input channels, on a backend other than cpp, with
    hooks anywhere in the model (the root's too), and for a model freeze() refuses (that answer
    is kept too). The module path and the program agree to float32 rounding, not bit for bit
    (V3's classifier hardswish is fused into the linear step's epilogue here), so the first
    call after a change may differ from the next ones in the last bits."""
    if (torch.is_grad_enabled() or model.training or not dispatch.cpp_direct(None, x)
            or x.numel() == 0 or torch_internals.global_module_hooks()):
        return forward_modules(x)
    entry = entry_of(model)  # [stamp, program]
    stamp, program = entry
    if stamp is None or not unchanged(stamp):
        out = forward_modules(x)
        # Stamped after the call, which may itself have changed the model (fused modules
        # create their fold caches on their first eval call). Nothing is computed from the
        # tensors' values yet, so their bytes are not copied.
        entry[:] = (take_stamp(model, values=False), None)
        return out
    if program is None:
        # A module in training mode, which freeze() refuses, is refused before anything is
        # built: a BN adapting to test data changes the model on every call.
        program = False
        if not any(m.training for m in model.modules()):
            with_values = take_stamp(model)
            try:
                with reading(with_values) as read:  # the folds read its copies
                    builder = build(model, view)
            except (TypeError, ValueError):  # what freeze() refuses
                builder = None
            if builder is not None:
                program = FrozenModel(builder)
                stamp = holding(with_values, builder.kept, read)
        entry[:] = (stamp, program)
    if not program or program.in_channels != x.shape[1]:
        return forward_modules(x)
    return program.run(x)
