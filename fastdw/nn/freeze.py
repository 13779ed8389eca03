"""freeze(model): an eval-mode MobileNet, or an nn.Sequential of fastdw layers, as one C++ program.

A frozen model runs the C++ kernels the model's module-by-module eval forward runs, with every
BatchNorm folded once, at freeze time, and nothing between the kernels: no nn.Module calls, no
fold-cache stamps, no custom-op dispatch (csrc/cpu/program.cpp, built by fastdw.nn.program). At
batch 1 that Python is a large share of a forward.

Like torch.jit.freeze or an ONNX Runtime session it is a snapshot: it holds copies of the folded
weights, so later edits to the model (training steps, load_state_dict, attribute changes) are not
seen; freeze again after them. It runs float32 CPU inputs and has no autograd.

fastdw.models' own eval forward under no_grad runs the same program, but live
(fastdw.models.eval_program): it views the model's tensors, and one stamp check of the whole
model per call drops it whenever the model changes (bench/compare_cpu.py times the two).
"""
import torch
from torch import nn

from fastdw import backend, torch_internals
from fastdw.nn.program import ProgramBuilder, build, snapshot
from fastdw.ops import dispatch


def _refuse_disabled_ops():
    disabled = backend.disabled_ops()
    if disabled:
        raise RuntimeError(f"the kill switch disables {sorted(disabled)} (FASTDW_DISABLE_OPS / "
                           "fastdw.set_disabled_ops), and a frozen model runs every op in C++; "
                           "call the model itself, which runs those ops on stock PyTorch")


def freeze(model: nn.Module) -> "FrozenModel":
    """`model`'s eval-mode forward as a FrozenModel. `model` is a fastdw or (converted)
    torchvision MobileNet, or an nn.Sequential (nested ones too) of fastdw layers and blocks,
    activation modules, Dropout, Identity, AdaptiveAvgPool2d(1) followed by Flatten(), and Linear
    layers; it must be in eval mode, float32, on the CPU, without forward hooks. Needs the cpp
    backend (fastdw._C), and no op disabled by the kill switch (fastdw.backend)."""
    _refuse_disabled_ops()
    builder = build(model, snapshot)
    builder.program.hold_snapshots()  # nothing else can write them: no byte checks per run
    return FrozenModel(builder)


class FrozenModel:
    """A frozen eval-mode forward (see freeze()). Call it with a float32 CPU tensor of the shape
    the model takes; it returns what the model's eval forward returns."""

    def __init__(self, builder: ProgramBuilder):
        self._program = builder.program
        self._rank, self.in_channels = builder.in_shape
        self.steps = tuple(builder.names)

    def __call__(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype is not torch.float32 or not x.is_cpu:
            raise TypeError(f"x must be a float32 CPU tensor (a frozen model runs those only), "
                            f"got {x.dtype} on {x.device}")
        if (x.dim() != self._rank or x.numel() == 0
                or self.in_channels not in (None, x.shape[1])):
            want = "(N, C, H, W)" if self._rank == 4 else "(N, C)"
            if self.in_channels is not None:
                want += f" tensor with C = {self.in_channels}"
            raise ValueError(f"x must be a non-empty {want}, got shape {tuple(x.shape)}")
        if x.requires_grad and torch.is_grad_enabled():
            raise ValueError("x requires grad, but a frozen model has no autograd; call the "
                             "model itself for gradients")
        if (not dispatch.plain(x) or dispatch.observed()
                or torch_internals.functorch_transforms_active()):
            raise RuntimeError("a frozen model runs plain eager calls only, not tensor "
                               "subclasses, torch.compile, tracing, functorch transforms, "
                               "forward AD or torch function/dispatch modes; use the model "
                               "itself there")
        _refuse_disabled_ops()
        return self.run(x)

    def run(self, x):
        """The program on x, with none of __call__'s checks: for a caller that has made them
        (fastdw.models.eval_program)."""
        return self._program.run(x.resolve_neg().resolve_conj())  # no lazy views in C++

    def __reduce__(self):  # pickle and copy.deepcopy
        raise TypeError("a FrozenModel cannot be pickled or copied: save the model's state_dict "
                        "and freeze the model again after loading it")

    def __repr__(self):
        return f"FrozenModel(steps={list(self.steps)})"
