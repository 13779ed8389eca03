"""convert(model): fastdw's fused modules in place of conv -> BN -> act layers and
inverted-residual (MBConv) blocks, found by structure, whatever library built them.

A walk over the module tree, children first. Each module is read by convert_match (torch.fx,
every submodule a leaf: which children its forward calls, in what order, and whether it adds its
input) and replaced, when that finds something to fuse, by:
* fastdw's own module where the tree is already fastdw's (torchvision's layout): ConvBNAct for
  a Sequential(Conv2d, BatchNorm2d[, act]), SqueezeExcite for an SE with children fc1/fc2,
  InvertedResidual / InvertedResidualV3 for a block whose only child is its stage Sequential
  `conv` / `block`. freeze() and the C++ program run these.
* otherwise a FusedChain (convert_fused): the original's children under their own names, one
  fastdw op per layer or block in eval, the original chain of children everywhere else.
Replacements hold the original modules (parameters shared, state_dict keys and tensors
unchanged) and only where fastdw computes the same function; everything left, and why, is in the
report. A module whose forward cannot be read is left as it is, and its children still convert.
"""
import copy
from typing import NamedTuple

import torch
from torch import nn

from fastdw.contract import adds_residual
from fastdw.nn.blocks import InvertedResidual, InvertedResidualBlock, InvertedResidualV3
from fastdw.nn.convert_fused import (FusedChain, FusedSequential, stand_in_block, stand_in_layer,
                                     stand_in_se)
from fastdw.nn.convert_match import (Atom, Block, NotAChain, Unit, act_name, atoms, block_at,
                                     is_sequential, squeeze_excite, unit_at, wiring)
from fastdw.nn.layers import ConvBNAct, DWConvBNAct, SqueezeExcite, plain, symmetric_conv

# The stage Sequential's name in torchvision's MobileNetV2 / V3 blocks, and fastdw's block for it.
_FASTDW_BLOCKS = {"conv": InvertedResidual, "block": InvertedResidualV3}
_FASTDW_MODULES = (ConvBNAct, SqueezeExcite, InvertedResidualBlock, FusedChain)


class Converted(NamedTuple):
    name: str              # the module's qualified name in the model ("" for the model)
    original: str          # its class before convert
    into: str              # what computes it now


class Left(NamedTuple):
    name: str
    original: str
    why: str


class ConvertReport:
    """What convert() did: `converted` (Converted: name, original class, what runs it now) and
    `left` (Left: name, class, why it stays as it was), outermost modules only. str() is the
    summary verbose=True prints."""

    def __init__(self, converted, left):
        self.converted, self.left = list(converted), list(left)

    def __str__(self):
        lines = [f"fastdw.convert: {len(self.converted)} converted, {len(self.left)} left"]
        lines += [f"  converted {c.name or '(model)'}: {c.original} -> {c.into}"
                  for c in self.converted]
        lines += [f"  left      {x.name or '(model)'}: {x.original}: {x.why}" for x in self.left]
        return "\n".join(lines)

    __repr__ = __str__


def convert_model(model: nn.Module, *, inplace: bool = False, exclude=(), verbose: bool = False,
                  return_report: bool = False):
    """fastdw's fused modules in place of every conv -> BatchNorm2d -> activation layer and
    inverted-residual / MBConv block of `model` that fastdw computes exactly, found by the
    structure of each module's forward, not by its class (torchvision's MobileNetV2/V3,
    EfficientNet and MNASNet, timm's MobileNetV3/V4 and EfficientNet blocks, a plain
    nn.Sequential(Conv2d, BatchNorm2d, ReLU6)). `fastdw.convert` is this function.

    inplace: convert `model` itself (False: a deep copy, `model` untouched).
    exclude: module names (qualified, as model.named_modules() gives them) or nn.Module
        classes (every module that is an instance of one): their subtrees are left as they
        are; a block holding one is not fused as a whole.
    verbose: print the report (what was converted, what was left and why).
    return_report: return (model, ConvertReport) instead of the model.

    Returns the converted model: `model` (or its copy) with submodules replaced, or a new
    module when the model itself is a convertible nn.Sequential. Its state_dict has the same
    keys and tensors, and loads into the original class with strict=True; eval-mode forwards
    run fused fastdw ops, training-mode forwards the original modules' own (BatchNorm batch
    statistics, Dropout, DropPath and StochasticDepth on residuals), with the same outputs and
    gradients. A converted block that is not fastdw's own keeps its children, their names and
    its plain attributes, not its class (FusedChain, its `original` names the class)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("model is a TorchScript module, whose forward is compiled: convert the "
                        "nn.Module before torch.jit.script")
    excluded = _exclusions(model, exclude)
    if not inplace:
        try:
            model = copy.deepcopy(model)
        except Exception as e:  # e.g. weight_norm's computed weights refuse deepcopy
            raise RuntimeError(f"convert(inplace=False) copies the model with copy.deepcopy, "
                               f"which failed ({type(e).__name__}: {e}); pass inplace=True "
                               "to convert the model itself") from e
    walk = _Walk(excluded)
    model = walk.visit(model, "", root=True)
    report = walk.report(model)
    if verbose:
        print(report)
    return (model, report) if return_report else model


def convert(model: nn.Module, **options) -> nn.Module:
    """convert_model(model, inplace=True, **options): convert `model` in place and return it
    (a new module only when `model` itself is a convertible nn.Sequential)."""
    return convert_model(model, inplace=True, **options)


def _exclusions(model, exclude):
    """The qualified names of the modules `exclude` names, or whose classes it names."""
    if isinstance(exclude, (str, type)):
        exclude = (exclude,)
    try:
        entries = tuple(exclude)
    except TypeError:
        raise TypeError(f"exclude must be module names or classes (an iterable of str or "
                        f"nn.Module subclasses), got {type(exclude).__name__}") from None
    modules = dict(model.named_modules())
    names = set()
    for entry in entries:
        if isinstance(entry, type) and issubclass(entry, nn.Module):
            # a filter, not a pointer: a class no module has excludes nothing
            names.update(name for name, m in modules.items() if isinstance(m, entry))
        elif not isinstance(entry, str):
            raise TypeError(f"exclude must hold module names (str) or nn.Module subclasses, "
                            f"got {entry!r}")
        elif entry not in modules:
            raise ValueError(f"exclude: {entry!r} names no module of the model (names are "
                             "those of model.named_modules())")
        else:
            names.add(entry)
    return frozenset(names)


def _join(path, name):
    return f"{path}.{name}" if path else name


def _under(path, prefix):
    """Whether path is prefix or a module under it."""
    return path == prefix or prefix == "" or path.startswith(prefix + ".")


def _class(module):
    return type(module).__name__


class _Walk:
    def __init__(self, excluded):
        self.excluded = excluded
        self.converted = {}  # path -> Converted
        self.why = {}        # path -> (class name, why it is left)

    def visit(self, module, path, root=False, fuse=True):
        if any(_under(path, e) for e in self.excluded):
            self.why[path] = (_class(module), "excluded (exclude=)")
            return module
        stages = _stage_sequential(module)
        for name, child in list(module._modules.items()):
            if child is not None:
                new = self.visit(child, _join(path, name), fuse=name != stages)
                if new is not child:
                    setattr(module, name, new)
        if isinstance(module, _FASTDW_MODULES) or not fuse:
            return module
        if any(_under(e, path) for e in self.excluded):
            return module  # a module holding an excluded one is not replaced as a whole
        if "forward" in module.__dict__:
            self.why[path] = (_class(module), "its forward is set on the module itself, "
                                              "which convert() does not read")
            return module
        new = self._fastdw_module(module, path, stages)
        if new is None:
            new = self._fused_chain(module, path, root)
        if new is None:
            return module
        new.training = module.training
        _carry_hooks(module, new)
        return new

    def _fastdw_module(self, module, path, stages):
        """fastdw's own module for `module` where their trees match, else None."""
        if is_sequential(module) and 2 <= len(module) <= 3:
            conv, bn, *act = module
            acts = [act_name(a) for a in act]
            if (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and None not in acts
                    and symmetric_conv(conv)):
                cls = DWConvBNAct if conv.groups == conv.in_channels else ConvBNAct
                layer = cls.wrap(conv, bn, acts[0] if acts else "none")
                fuses = layer.children_fuse()
                if act:  # the original act module, not wrap's new one: its hooks, its edits
                    layer._modules["2"] = act[0]
                if fuses:
                    self._done(path, module, f"{cls.__name__} ({layer.kind}, {layer.act})")
                    return layer
        se = squeeze_excite(module)
        if se is not None and (se.fc1, se.fc2) == ("fc1", "fc2") and all(
                k.startswith(("fc1.", "fc2.")) for k in module.state_dict()):
            try:
                new = stand_in_se(Atom("se", path, module, se))
            except ValueError as e:
                self.why[path] = (_class(module), f"squeeze-excite with {se.act} / {se.gate} "
                                                  f"gate: {e}")
                return None
            self._done(path, module, f"SqueezeExcite ({se.act} / {se.gate})")
            return new
        if stages is not None:
            cls, layers = _FASTDW_BLOCKS[stages], module._modules[stages]
            try:
                chain = wiring(module)
            except NotAChain:
                return None
            if chain.steps == (stages,) and cls.fusable(layers):
                block = cls.wrap(layers)
                if block.use_res_connect == chain.residual and block.stages_fuse():
                    _carry_hooks(layers, getattr(block, stages))  # wrap made a new Sequential
                    self._done(path, module, f"{cls.__name__} (inverted_residual"
                                             f"{', residual' if chain.residual else ''})")
                    return block
        return None

    def _fused_chain(self, module, path, root):
        """A FusedChain for `module` when its chain holds a layer or block not fused yet."""
        if list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)):
            return None
        try:
            chain = wiring(module)
        except NotAChain as e:
            if any(isinstance(m, nn.Conv2d) for m in module.children()):
                self.why[path] = (_class(module), str(e))
            return None
        found = [a for name in chain.steps for a in atoms(module._modules[name], name)]
        plan, why = _plan(found)
        for p, reason in why.items():
            self.why[_join(path, p)] = reason
        adds_input = chain.residual
        blocks = [item for item in plan if not (isinstance(item, Atom)
                                                and item.kind == "identity")]
        if (chain.residual and len(blocks) == 1 and isinstance(blocks[0], Block)
                and _adds_residual(blocks[0])):
            plan = [item._replace(residual=True) if item is blocks[0] else item
                    for item in plan]
            adds_input = False
        # Something to fuse that no module under this one fuses already
        new = [item for item in plan if isinstance(item, (Unit, Block))
               and (not _inside_fused(module, item) or getattr(item, "residual", False))]
        if not new:
            return None
        whole = all(isinstance(item, (Unit, Block)) or item.kind == "identity"
                    for item in plan)
        if root and not (is_sequential(module) or whole):
            # a model's class (its other methods, what other code checks) stays; a module
            # given to convert() alone that runs fused through and through does not
            for item in new:
                self.why[_join(path, item.atoms[0].path)] = (
                    "Conv2d", f"called by {_class(module)}'s own forward: convert() replaces "
                              "a model's submodules, not the model")
            return None
        cls = FusedSequential if is_sequential(module) else FusedChain
        fused = cls(module, chain, plan, adds_input)
        self._done(path, module, _describe(plan, adds_input))
        return fused

    def _done(self, path, module, into):
        self.converted[path] = Converted(path, _class(module), into)

    def report(self, model):
        runs = {name: {_join(name, a.path) for item in m.plan
                       if isinstance(item, (Unit, Block)) for a in item.atoms}
                for name, m in model.named_modules() if isinstance(m, FusedChain)}
        covered = set().union(*runs.values()) | {
            name for name, m in model.named_modules()
            if isinstance(m, (ConvBNAct, InvertedResidualBlock))}

        blocks = {name for name, m in model.named_modules()
                  if isinstance(m, InvertedResidualBlock)}

        def absorbed(p):  # run by a block or FusedChain around it: not listed apart
            return any(q != p and _under(p, q) and (q in blocks or any(_under(a, p) for a in
                                                                       runs.get(q, ())))
                       for q in blocks | runs.keys())

        outer = [c for p, c in self.converted.items() if not absorbed(p)]
        left = {}
        for name, m in model.named_modules():
            if type(m) is not nn.Conv2d or any(_under(name, c) for c in covered):
                continue
            at = next((p for p in _prefixes(name) if p in self.why), None)
            if at is None:
                left[name] = Left(name, "Conv2d", "not followed by a BatchNorm2d in a chain "
                                                  "convert() can read")
            elif not any(_under(at, c) for c in covered):
                left[at] = Left(at, *self.why[at])
        for path, (cls, why) in self.why.items():  # excluded modules without convs too
            if why.startswith("excluded"):
                left.setdefault(path, Left(path, cls, why))
        return ConvertReport(outer, sorted(left.values()))


def _carry_hooks(old, new):
    """new, which replaces old in the model, runs old's hooks (forward, backward, state_dict):
    the very dicts, so a handle registered on old still removes its hook."""
    new.__dict__.update((name, value) for name, value in old.__dict__.items() if "hook" in name)


def _prefixes(name):
    """name, then each module above it, up to the model ("")."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _stage_sequential(module):
    """The child name of a torchvision-shaped block's stage Sequential ("conv" / "block", its
    only child), or None: that Sequential is left for the block to wrap."""
    names = list(module._modules)
    if len(names) == 1 and names[0] in _FASTDW_BLOCKS and type(module._modules[names[0]]) \
            is nn.Sequential and not isinstance(module, nn.Sequential):
        return names[0]
    return None


def _inside_fused(module, item):
    """Whether a Unit's or Block's atoms are all under one module convert() made already."""
    for prefix in reversed(_prefixes(item.atoms[0].path)[1:-1]):  # outermost first
        if isinstance(module.get_submodule(prefix), (ConvBNAct, FusedChain)):
            return all(_under(a.path, prefix) for a in item.atoms)
    return False


def _adds_residual(block):
    conv = block.dw.conv
    c_in = (block.expand or block.dw).conv.in_channels
    return conv.stride == (1, 1) and adds_residual(1, c_in, block.project.conv.out_channels)


def _plan(found):
    """The eval plan of a chain's atoms: Blocks where they fuse, else Units where they fuse,
    else the atoms themselves (a BN with its own tail covers it); and {path: (class, why)} for
    what looked like a block or layer and does not fuse."""
    plan, why = [], {}
    i = 0
    while i < len(found):
        block = block_at(found, i)
        if block is not None:
            reason = _block_does_not_fuse(block)
            if reason is None:
                plan.append(block)
                i += len(block.atoms)
                continue
            where = block.se if reason[0] == "se" else block.dw.atoms[0]
            why[where.path] = (_class(where.module), reason[1])
        unit = unit_at(found, i)
        if unit is not None:
            if stand_in_layer(unit).children_fuse() and (unit.kind == "conv"
                                                         or symmetric_conv(unit.conv)):
                plan.append(unit)
                i += len(unit.atoms)
                continue
            why.setdefault(found[i].path, ("Conv2d", _layer_does_not_fuse(unit)))
        atom = found[i]
        plan.append(atom)
        i += 1 + (atom.info if atom.kind == "bn" else 0)
    return plan, why


def _layer_does_not_fuse(unit):
    conv = unit.conv
    for module in (conv, unit.bn):
        if type(module) in (nn.Conv2d, nn.BatchNorm2d) and not plain(module, type(module)):
            return (f"its {type(module).__name__} has hooks, a forward of its own or a tensor "
                    "that is not a parameter or buffer (weight_norm): fastdw's layers stand in "
                    "for plain modules")
    if conv.bias is not None:
        return "the conv has a bias: fastdw's layers fold a bias-free conv and its BatchNorm"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}: fastdw's layers pad with zeros"
    if isinstance(conv.padding, str):
        return (f"padding={conv.padding!r}: fastdw's depthwise and 1x1 layers take the padding "
                "as numbers")
    return (f"asymmetric conv {conv}: fastdw's layers take square kernels with equal strides, "
            "paddings and dilations")


def _block_does_not_fuse(block):
    """None when the block fuses, else (stage, why)."""
    if block.se is not None:
        try:
            stand_in_se(block.se)
        except ValueError as e:
            shape = block.se.info
            return "se", f"squeeze-excite with {shape.act} / {shape.gate} gate: {e}"
    dw = block.dw.conv
    if block.expand is not None and block.expand.act != block.dw.act:
        return "dw", (f"expand act {block.expand.act} differs from the depthwise act "
                      f"{block.dw.act}: the block op has one act for both")
    if stand_in_block(block).stages_fuse():
        return None
    return "dw", (f"depthwise {dw}: the block op takes odd square kernels, equal strides, "
                  "dilation 1 and 'same' padding, with bias-free convs")


def _describe(plan, adds_input):
    parts = []
    for item in plan:
        if isinstance(item, Block):
            se = "" if item.se is None else f" + SE {item.se.info.act}/{item.se.info.gate}"
            expand = "expand + " if item.expand is not None else ""
            k = item.dw.conv.kernel_size[0]
            parts.append(f"inverted_residual({expand}dw{k}x{k} {item.dw.act}{se}"
                         f"{', residual' if item.residual else ''})")
        elif isinstance(item, Unit):
            op = {"depthwise": "dwconv_bn_act", "pointwise": "pwconv_bn_act"}.get(
                item.kind, "conv with BN folded")
            parts.append(f"{op}({item.act})")
    return " + ".join(parts) + (" + input" if adds_input else "")
