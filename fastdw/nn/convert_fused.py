"""FusedChain: what convert() puts in place of a module whose forward is a chain of its children
(convert_match.wiring) holding conv -> BN -> act layers or inverted-residual blocks that are not
laid out as fastdw's own modules (timm's blocks, torchvision's MBConv and MNASNet blocks, a flat
nn.Sequential).

It holds the original's children under their own names (so state_dict keys and tensors, and the
modules themselves, are the original's) and its plain attributes, fixed to the values
its forward was read with. Its forward:
* in eval, with every module under it in eval mode and nothing watching (hooks, a forward set
  on a module, a child replaced since convert): one fastdw op per Unit and Block of its plan,
  bound once per change of the modules and cached under fastdw.nn.cache's stamp; the plan's
  other atoms run as they are, and those that are the identity in eval are skipped;
* otherwise: the original chain of children as it is (the wiring), so training, with
  Dropout, DropPath or StochasticDepth on the residual, is exactly the original's.

The ops are bound from fastdw's own modules standing in for each Unit and Block (stand_in_layer,
stand_in_block), made of the original conv, BN and SE modules, so a Unit or a Block fuses exactly
where fastdw's ConvBNAct and InvertedResidualV3 would.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from fastdw import torch_internals
from fastdw.nn.cache import CachedForward, cached
from fastdw.nn.convert_match import Atom, Block, Unit, Wiring, identity_in_eval
from fastdw.nn.layers import (RUN_CHILDREN, ConvBNAct, DWConvBNAct, SqueezeExcite,
                              feature_layout, traced_as_leaf)
from fastdw.nn.blocks import InvertedResidualV3

# The attribute names every nn.Module has: not copied from the original.
_MODULE_STATE = frozenset(nn.Module().__dict__)
_PLAIN_VALUES = (bool, int, float, str, type(None))


def plain_bn(bn):
    """An nn.BatchNorm2d over bn's own tensors (bn itself if it is one): what fastdw's modules
    fold. A BatchNorm2d subclass (timm's BatchNormAct2d) normalises as BatchNorm2d does, which
    convert_match checked on its forward."""
    if type(bn) is nn.BatchNorm2d:
        return bn
    with torch.device("meta"):
        view = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine,
                              bn.track_running_stats)
    view._parameters.update(bn._parameters)
    view._buffers.update(bn._buffers)
    view.training = bn.training
    return view


def stand_in_layer(unit: Unit, own_act=False):
    """fastdw's ConvBNAct (or DWConvBNAct) over the unit's conv and BN tensors; with own_act,
    over the unit's own act module too (not a new one), so that children_fuse() sees what was
    done to it since convert (ReLU6 bounds edited)."""
    cls = DWConvBNAct if unit.kind == "depthwise" else ConvBNAct
    layer = cls.wrap(unit.conv, plain_bn(unit.bn), unit.act)
    if own_act and unit.act != "none":
        layer._modules["2"] = unit.atoms[-1].module
    return layer


def stand_in_se(se: Atom):
    """fastdw's SqueezeExcite over an SE atom's convs; ValueError naming what fastdw's
    SqueezeExcite does not compute."""
    shape = se.info
    fc1, fc2 = se.module.get_submodule(shape.fc1), se.module.get_submodule(shape.fc2)
    with torch.device("meta"):
        new = SqueezeExcite(fc1.in_channels, fc1.out_channels, act=shape.act, gate=shape.gate)
    new.fc1, new.fc2 = fc1, fc2
    return new


def stand_in_block(block: Block, own_acts=False):
    """fastdw's InvertedResidualV3 over the block's modules, adding its input where the block
    does (block.residual); own_acts: see stand_in_layer."""
    stages = [stand_in_layer(block.expand, own_acts)] if block.expand is not None else []
    stages.append(stand_in_layer(block.dw, own_acts))
    if block.se is not None:
        stages.append(stand_in_se(block.se))
    stages.append(stand_in_layer(block.project, own_acts))
    new = InvertedResidualV3.wrap(nn.Sequential(*stages))
    new.use_res_connect = block.residual
    return new


class _FoldedConv:
    """A general conv (a stem) with its BN folded into weight and bias, then its act module."""

    def __init__(self, conv, weight, bias, act):
        self.conv, self.weight, self.bias, self.act = conv, weight, bias, act

    def __call__(self, x):
        c = self.conv
        y = F.conv2d(x, self.weight, self.bias, c.stride, c.padding, c.dilation, c.groups)
        return y if self.act is None else self.act(y)


class FusedChain(CachedForward, nn.Module):
    """See the module docstring. `wiring` is the original forward's chain of children; `plan`
    the eval forward's Units, Blocks and Atoms in order (paths under this module); `adds_input`
    whether the eval forward adds the input after the plan (a residual no Block fuses);
    `original` the class it replaced, by name."""

    def __init__(self, source: nn.Module, wiring: Wiring, plan, adds_input: bool):
        super().__init__()
        for name, child in source._modules.items():
            self.add_module(name, child)
        read = [name for name, value in source.__dict__.items()
                if name not in _MODULE_STATE and type(value) in _PLAIN_VALUES]
        for name in read:  # e.g. timm's has_skip, torchvision's out_channels
            self.__dict__[name] = source.__dict__[name]
        self.__dict__["_read_with"] = frozenset(read)
        self.training = source.training
        self.wiring = wiring
        # every module under it as convert() read them: one swapped since (an SE's act) unfuses
        self.__dict__["_tree"] = tuple(self.named_modules())
        self.plan = tuple(plan)
        self.adds_input = adds_input
        self.original = f"{type(source).__module__}.{type(source).__qualname__}"

    def extra_repr(self):
        return f"original={self.original}"

    def __setattr__(self, name, value):
        # The wiring and plan were read from the original's forward with these values (a flag
        # such as has_skip may choose what it calls): another value would go unseen.
        if name in self.__dict__.get("_read_with", ()):
            old = self.__dict__[name]
            if not (type(value) is type(old) and value == old):
                raise AttributeError(
                    f"{name!r} of this converted {self.original} is the value convert() read its "
                    f"forward with ({old!r}): set it on the original module and convert that")
        super().__setattr__(name, value)

    def forward(self, x):
        if isinstance(x, torch.fx.Proxy):
            return traced_as_leaf(self, x)
        x = feature_layout(x)
        if not self.training:
            steps = cached(self, self._bind)
            if (steps is not None and steps is not RUN_CHILDREN
                    and not torch_internals.global_module_hooks()):
                y = x
                for step in steps:
                    y = step(y)
                return y + x if self.adds_input else y
        return self._run_children(x)

    def _run_children(self, x):
        y = x
        for name in self.wiring.steps:
            y = self._modules[name](y)
        return y + x if self.wiring.residual else y

    def _atoms(self):
        for item in self.plan:
            yield from (item.atoms if isinstance(item, (Unit, Block)) else (item,))

    def _bind(self):
        """The eval forward's steps (bound ops, folded convs, modules to run as they are); None
        while a module under this one trains; RUN_CHILDREN where the modules are no longer
        those the plan was made of, or something watches them (hooks on this module itself
        run around its forward, whichever way it computes)."""
        for m in self.modules():
            if m.training:
                return None
            if m is not self and (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                    or m._backward_pre_hooks or "forward" in m.__dict__):
                return RUN_CHILDREN
        tree = self.__dict__.get("_tree")  # (absent from a module pickled before it was kept)
        if not all(self.get_submodule(a.path) is a.module for a in self._atoms()) or (
                tree is not None and tuple(self.named_modules()) != tree):
            return RUN_CHILDREN
        # skipped as the identity in eval: still so (a flag set since may switch one on); not
        # while torch.compile traces, where the probe's data-dependent answer breaks the graph
        if not torch.compiler.is_compiling() and not all(
                identity_in_eval(a.module) for a in self._atoms() if a.kind == "identity"):
            return RUN_CHILDREN
        steps = []
        for item in self.plan:
            if isinstance(item, Block):
                step = stand_in_block(item, own_acts=True).bound_op()
            elif isinstance(item, Unit):
                step = self._unit_step(item)
            else:
                step = None if item.kind == "identity" else item.module
            if step is RUN_CHILDREN or (step is None and not isinstance(item, Atom)):
                return RUN_CHILDREN
            if step is not None:
                steps.append(step)
        return steps

    @staticmethod
    def _unit_step(unit):
        layer = stand_in_layer(unit, own_act=True)
        folded = layer._folded()
        if folded is RUN_CHILDREN or folded is None or layer.kind != "conv":
            return folded
        act = unit.atoms[-1].module if unit.act != "none" else None
        return _FoldedConv(unit.conv, *folded, act)


class FusedSequential(FusedChain, nn.Sequential):
    """A FusedChain in place of an nn.Sequential, and an nn.Sequential still: indexing, len(),
    iteration and edits work as on the original. Its unfused forward runs the children it has
    now; it runs fused only while they are those it was converted with."""

    def _run_children(self, x):
        return nn.Sequential.forward(self, x)

    def _bind(self):
        if tuple(name for name, m in self._modules.items() if m is not None) \
                != self.wiring.steps:
            return RUN_CHILDREN
        return super()._bind()

    def __getitem__(self, idx):
        if isinstance(idx, slice):  # the modules of a slice, without the plan of the whole
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return nn.Sequential.__getitem__(self, idx)
