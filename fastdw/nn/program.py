"""The program of a model's eval forward: a walk over its modules in forward order that turns
them into the steps of a C++ Program (csrc/cpu/program.cpp), with every BatchNorm folded. Each
fused layer's step takes the kernel arguments of the layer's bound op (fastdw.ops.bind).

fastdw.nn.freeze runs such a program on private snapshots of the tensors; fastdw.models' eval
forward (fastdw.models.eval_program) runs one on views of the model's own tensors.

Models whose forward is classifier(flatten(global_avg_pool(features(x)))) are "heads": the
torchvision MobileNets, and classes registered with register_head (fastdw.models registers its
own, so nn never imports models).
"""
import torch
import torchvision.models as tv
from torch import nn

from fastdw import backend
from fastdw.nn.blocks import InvertedResidualBlock
from fastdw.nn.fold import fold_conv, foldable
from fastdw.nn.layers import (ACT_MODULES, ACT_NAMES, RUN_CHILDREN, ConvBNAct, Linear,
                              symmetric_conv)
from fastdw.ops import BoundOp

_HEADS = {tv.MobileNetV2, tv.MobileNetV3}


def register_head(cls):
    """Let build() run models of class `cls`, whose forward is
    classifier(flatten(global_avg_pool(features(x)))) with the pool a function or an
    `avgpool` AdaptiveAvgPool2d(1) module; returns cls."""
    _HEADS.add(cls)
    return cls


def build(model, keep):
    """The program of model's eval forward (a finished ProgramBuilder); `keep(value)` is what a
    step holds of each of its arguments (snapshot or view)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    cpp = backend.info()["cpp"]
    if not cpp["usable"]:
        reason = cpp["reason"]
        raise backend.BackendUnavailableError(f"freeze() needs the cpp backend: {reason}")
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks:
            raise ValueError(f"freeze() cannot run forward hooks (found on {name or 'model'})")
        for t in [*m._parameters.values(), *m._buffers.values()]:
            if t is not None and (t.dtype not in (torch.float32, torch.int64) or not t.is_cpu):
                raise TypeError(f"freeze() needs a float32 CPU model; {name or 'model'} holds "
                                f"a {t.dtype} tensor on {t.device}")
    builder = ProgramBuilder(keep)
    # Outside inference mode (a frozen model's snapshots are ordinary tensors), then no_grad
    # (inference_mode(False) turns grad mode back on).
    with torch.inference_mode(False), torch.no_grad():
        if type(model) in _HEADS:
            # forward and what it calls: _forward_modules (fastdw's), _forward_impl
            # (torchvision's), each still the function written in the class body, not one
            # set on the model or assigned to the class later
            cls = type(model)
            names = [n for n in ("forward", "_forward_modules", "_forward_impl")
                     if hasattr(cls, n)]
            if (model.__dict__.keys() & names
                    or not all(_written_in_class(cls, n) for n in names)):
                raise TypeError("freeze(): the model has a forward of its own, which the "
                                "program would not run")
            avgpool = getattr(model, "avgpool", None)  # V3's module; V1/V2 call the function
            if avgpool is not None:
                _check_forward(avgpool, "avgpool")
                if not _is_global_pool(avgpool):
                    raise TypeError(f"freeze() cannot run avgpool ({avgpool!r}) in C++")
            builder.add(model.features, "features")
            builder.pool()
            builder.add(model.classifier, "classifier")
        elif type(model) is nn.Sequential:
            builder.add(model, "")
        else:
            raise TypeError(f"freeze() takes a MobileNet or an nn.Sequential, got "
                            f"{type(model).__name__}")
    return builder.finish()


# The forwards the steps stand in for, as they were when this module was imported: a module
# whose forward was replaced (on the instance, in a subclass or on the class) computes something
# the program does not.
_FORWARDS = {cls: cls.forward for cls in (
    nn.Sequential, nn.Dropout, nn.Identity, nn.Flatten, nn.AdaptiveAvgPool2d, nn.Linear, Linear,
    ConvBNAct, InvertedResidualBlock, *ACT_MODULES.values())}


def _written_in_class(cls, name):
    """Whether cls.<name> is the function written as <name> in the body of the class (cls or a
    base) that holds it, not one assigned to a class later."""
    owner = next(c for c in cls.__mro__ if name in c.__dict__)
    fn = owner.__dict__[name]
    return (getattr(fn, "__qualname__", None) == f"{owner.__qualname__}.{name}"
            and fn.__module__ == owner.__module__)


def _check_forward(module, path):
    base = next((cls for cls in type(module).__mro__ if cls in _FORWARDS), None)
    if base is not None and ("forward" in module.__dict__
                             or type(module).forward is not _FORWARDS[base]):
        raise TypeError(f"freeze(): {path} ({type(module).__name__}) has a forward of its "
                        "own, which the program would not run")


def _check_act_module(module, path):
    """An activation module whose act name says what it computes: its class's own forward,
    and a ReLU6 (a Hardtanh) still clamping to [0, 6]."""
    _check_forward(module, path)
    if isinstance(module, nn.Hardtanh) and (module.min_val, module.max_val) != (0.0, 6.0):
        raise TypeError(f"freeze(): {path} clamps to [{module.min_val}, {module.max_val}], "
                        "not ReLU6's [0, 6]")


def _check_foldable(bn, path):
    if bn.training:
        raise ValueError(f"freeze() needs an eval-mode model: {path} is training "
                         "(call model.eval())")
    if not foldable(bn):
        raise ValueError(f"freeze(): {path} has no running statistics "
                         "(track_running_stats=False) to fold")


def _is_global_pool(module):
    return type(module) is nn.AdaptiveAvgPool2d and module.output_size in (1, (1, 1))


def snapshot(value):
    """A private copy of a tensor, which no edit to the model reaches; other values as they are."""
    if not isinstance(value, torch.Tensor):
        return value
    return value.detach().clone(memory_format=torch.contiguous_format)


def view(value):
    """The model's own tensor (for a program whose cache stamp sees every edit); other values as
    they are."""
    return value.detach() if isinstance(value, torch.Tensor) else value


class ProgramBuilder:
    """Walks modules in forward order and turns them into steps of a C++ Program,
    tracking the rank and channels of the running tensor so that layouts the program cannot run
    fail here, not at the first call. A step is added one module late: an activation module that
    follows a step without one becomes that step's epilogue."""

    def __init__(self, keep):
        self._keep = keep        # what a step holds of each argument: snapshot or view
        self.kept = []           # the tensors the steps hold
        self.program = backend.module("cpp").new_program()
        self.names = []          # step names, for repr
        self.in_shape = None     # (rank, channels or None: any) the first step takes
        self.rank = self.channels = None
        self.pending = None      # [Program method, its arguments, index of its act or None]
        self.pooled_at = None    # path of an AdaptiveAvgPool2d(1) still awaiting its Flatten

    def keep(self, value):
        value = self._keep(value)
        if isinstance(value, torch.Tensor):
            self.kept.append(value)
        return value

    def finish(self):
        if self.pooled_at is not None:
            raise TypeError(f"freeze(): {self.pooled_at} (AdaptiveAvgPool2d) must be followed "
                            "by Flatten()")
        self._flush()
        if not self.names:
            raise ValueError("freeze(): the model computes nothing (no layers)")
        return self

    def _flush(self):
        if self.pending is not None:
            method, args, _ = self.pending
            getattr(self.program, method)(*args)
            self.pending = None

    def _step(self, path, name, rank_in, channels_in, rank_out, channels_out, method, args,
              act_index=None):
        args = list(args)
        if None not in (self.channels, channels_in) and self.channels != channels_in:
            raise TypeError(f"freeze(): {path} takes {channels_in} channels but gets the "
                            f"{self.channels} of the layer before it")
        self._flush()
        if self.in_shape is None:
            self.in_shape = (rank_in, channels_in)
        if act_index is not None and args[act_index] != "none":
            name += f"+{args[act_index]}"
        self.names.append(name)
        self.rank, self.channels = rank_out, channels_out
        self.pending = [method, args, act_index]

    def _expect(self, path, rank):
        if self.rank is not None and self.rank != rank:
            raise TypeError(f"freeze(): {path} takes a {rank}-D input but gets the "
                            f"{self.rank}-D output of the layer before it")

    def add(self, module, path):
        _check_forward(module, path)
        if self.pooled_at is not None and type(module) is not nn.Sequential:
            if type(module) is not nn.Flatten or (module.start_dim, module.end_dim) != (1, -1):
                raise TypeError(f"freeze(): {self.pooled_at} (AdaptiveAvgPool2d) must be "
                                "followed by Flatten()")
            self.pooled_at = None  # the pool step already returned (N, C)
            return
        if type(module) is nn.Sequential:
            for name, child in module.named_children():
                self.add(child, f"{path}.{name}" if path else name)
        elif isinstance(module, InvertedResidualBlock):
            self._block(module, path)
        elif isinstance(module, ConvBNAct):
            self._conv_bn_act(module, path)
        elif type(module) in (nn.Dropout, nn.Identity):
            if module.training:
                raise ValueError(f"freeze() needs an eval-mode model: {path} is in training "
                                 "mode (call model.eval())")
        elif type(module) in ACT_NAMES:
            _check_act_module(module, path)
            self._act(ACT_NAMES[type(module)], path)
        elif _is_global_pool(module):
            self.pool(path)
            self.pooled_at = path
        elif type(module) in (nn.Linear, Linear):
            self._linear(module, path)
        else:
            raise TypeError(f"freeze() cannot run {path} ({type(module).__name__}) in C++")

    def pool(self, path="the global average pool"):
        """Global average pool + flatten, (N, C, H, W) -> (N, C)."""
        self._expect(path, 4)
        self._step(path, "global_avg_pool", 4, None, 2, self.channels, "add_global_avg_pool",
                   ())

    def _block(self, block, path):
        self._expect(path, 4)
        for name, bn in block.named_modules(prefix=path):
            if isinstance(bn, nn.BatchNorm2d):
                _check_foldable(bn, name)
        bound = block.bound_op()
        if bound is RUN_CHILDREN:
            raise TypeError(f"freeze() cannot run {path} in C++: its stages are not what the "
                            "fused op computes, or carry hooks")
        if bound.kernel_args is None:  # only a squeeze-excite without biases
            raise TypeError(f"freeze() cannot run {path} in C++ (its squeeze-excite has no bias)")
        weights, *options = bound.kernel_args
        self._step(path, "inverted_residual", 4, bound.in_channels, 4, block.out_channels,
                   "add_inverted_residual", [list(map(self.keep, weights)), *options])

    def _conv_bn_act(self, layer, path):
        self._expect(path, 4)
        conv, bn = layer[0], layer[1]
        _check_foldable(bn, f"{path}.1")
        if not symmetric_conv(conv):
            raise TypeError(f"freeze() cannot run {path}.0 ({conv!r}) in C++: it runs square "
                            "kernels with equal strides, paddings and dilations, zero padding "
                            "and no conv bias")
        act_modules = list(layer)[2:]
        for i, act in enumerate(act_modules, 2):  # the stem's eval forward calls its act module
            _check_act_module(act, f"{path}.{i}")
        if [type(m) for m in act_modules] != [ACT_MODULES[a] for a in (layer.act,)
                                              if a != "none"]:
            raise TypeError(f"freeze(): {path}'s activation modules {act_modules} are not its "
                            f"act {layer.act!r}")
        c_in, c_out = conv.in_channels, conv.out_channels
        folded = layer._folded()
        if folded is RUN_CHILDREN:
            raise TypeError(f"freeze() cannot run {path} in C++: its children are not what the "
                            "fused op computes, or carry hooks")
        if isinstance(folded, BoundOp) and folded.kernel_args is not None:
            args = list(map(self.keep, folded.kernel_args))
            if folded.name == "pwconv_bn_act":
                args = args[:4]  # the residual (None) is not a step's
            self._step(path, folded.name, 4, c_in, 4, c_out, f"add_{folded.name}", args,
                       act_index=len(args) - 1)
            return
        # The stem (the program's direct conv kernel), depthwise with a channel multiplier
        # (ATen's grouped conv).
        weight, bias = fold_conv(conv, bn)
        self._step(path, "conv", 4, c_in, 4, c_out, "add_conv",
                   (self.keep(weight), self.keep(bias), conv.stride[0], conv.padding[0],
                    conv.dilation[0], conv.groups, layer.act), act_index=6)

    def _linear(self, linear, path):
        self._expect(path, 2)
        bias = linear.bias if linear.bias is not None else linear.weight.new_zeros(
            linear.out_features)
        self._step(path, "linear", 2, linear.in_features, 2, linear.out_features,
                   "add_linear", (self.keep(linear.weight), self.keep(bias), "none"),
                   act_index=2)

    def _act(self, act, path):
        if self.pending is None:
            raise TypeError(f"freeze(): {path} ({act}) has no layer before it")
        _, args, index = self.pending
        if index is not None and args[index] == "none":
            args[index] = act  # fused into the epilogue of the step before
            self.names[-1] += f"+{act}"
            return
        self._step(path, act, self.rank, self.channels, self.rank, self.channels, "add_act",
                   (act,))
