"""Reading a module's forward by structure, for convert(): what it calls, in what order, and
which runs of the calls are a conv -> BN -> act layer or an inverted-residual block.

A module is read, never run (but for one probe of parameter-free leaves, below), with torch.fx:
its forward is traced with every submodule a leaf, so the graph says which children it calls
and what it does between them, whatever its class. Three readings:

* wiring(module): the forward as a chain of its children, x -> c1 -> c2 -> ... (-> + x), the
  same in training and in eval. A converted module runs this chain as it is whenever it does
  not run fused (training, hooks, an edited child), so it computes what the original did.
* atoms(module): the eval-mode forward flattened into leaves: convs, BatchNorms, activations,
  squeeze-excites, modules that are the identity in eval (Dropout, DropPath, StochasticDepth)
  and opaque modules (anything else, run as is). Children that are chains themselves
  (nn.Sequential, timm's ConvNormAct, a BatchNorm followed by its own activation as timm's
  BatchNormAct2d) are read through.
* segments(atoms): the atoms grouped into Units (conv, BN, act) and Blocks ([expand unit],
  depthwise unit, [squeeze-excite], project unit), the shapes fastdw's ops compute; whether a
  group really fuses is checked on fastdw modules standing in for it (convert_fused).
"""
import inspect
import operator
from typing import NamedTuple, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fastdw.contract import ACTIVATIONS
from fastdw.nn.layers import ACT_NAMES, ConvBNAct, conv_kind


class NotAChain(Exception):
    """A module's forward is not what convert() can read; the message says why."""


class Wiring(NamedTuple):
    steps: tuple           # child names, called in this order, each on the previous output
    residual: bool         # whether the forward adds its input to the last output


class Atom(NamedTuple):
    kind: str              # "conv", "bn", "act", "identity", "se" or "opaque"
    path: str              # the module's name under the module being read
    module: nn.Module
    info: object = None    # act: its name; bn: how many atoms its own tail is; se: SEShape


class SEShape(NamedTuple):
    fc1: str               # path of the squeeze 1x1 conv (with bias) under the SE module
    act: str               # its activation
    fc2: str               # path of the excite 1x1 conv (with bias)
    gate: str              # the gate: "sigmoid" or "hardsigmoid"


class Unit(NamedTuple):
    atoms: tuple           # (conv, bn, [identities], [act]) atoms
    act: str               # the act name, "none" without one

    @property
    def conv(self):
        return self.atoms[0].module

    @property
    def bn(self):
        return self.atoms[1].module

    @property
    def kind(self):
        return conv_kind(self.conv)


class Block(NamedTuple):
    atoms: tuple           # every atom the block covers, in order
    expand: Optional[Unit]
    dw: Unit
    se: Optional[Atom]
    project: Unit
    residual: bool         # whether the block adds its input (fused into the op)


# Module classes and functions that are activations (or squeeze-excite gates), by name.
_GATE_NAMES = {nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid"}
_ACT_FUNCTIONS = {fn: name for name, fn in ACTIVATIONS.items() if name != "none"}
_ACT_FUNCTIONS.update({torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid"})
_ADDS = (operator.add, operator.iadd, torch.add)
_MULS = (operator.mul, operator.imul, torch.mul)
# Nodes a forward may hold beside its data flow: shape asserts (timm's BatchNormAct2d).
_CHECKS = (getattr, operator.eq, torch._assert)


class _ChildrenAsLeaves(fx.Tracer):
    def is_leaf_module(self, module, qualified_name):
        return True


def _trace(module, training=None):
    """module's forward as an fx graph, every submodule a leaf; in `training` mode (the
    module's own flag: its children are not run)."""
    was = module.training
    if training is not None:
        module.training = training
    try:
        return _ChildrenAsLeaves().trace(module)
    except Exception as e:  # fx raises many kinds; any of them means "cannot be read"
        raise NotAChain(f"torch.fx cannot trace its forward ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120] if str(e) else ''})") from e
    finally:
        module.training = was


def is_sequential(module):
    """Whether module's forward is nn.Sequential's (its children in order)."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _chain(graph, module):
    """Wiring of a graph traced from module, or NotAChain."""
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise NotAChain("its forward takes more than one input")
    x = inputs[0]
    (result,) = [n for n in nodes if n.op == "output"][0].args
    residual = False
    if (isinstance(result, fx.Node) and result.op == "call_function" and result.target in _ADDS
            and not result.kwargs and len(result.args) == 2 and x in result.args
            and result.args[0] is not result.args[1]):
        residual = True
        result = result.args[1] if result.args[0] is x else result.args[0]
    steps = []
    node = result
    while node is not x:
        if not (isinstance(node, fx.Node) and node.op == "call_module" and len(node.args) == 1
                and not node.kwargs and node.target in module._modules):
            raise NotAChain("its forward does more than call its children one after another "
                            "(and add its input)")
        steps.append(node.target)
        node = node.args[0]
    if len(nodes) != 2 + residual + len(steps) or len(set(steps)) != len(steps):
        raise NotAChain("its forward does more than call its children one after another "
                        "(and add its input)")
    return Wiring(tuple(reversed(steps)), residual)


def wiring(module) -> Wiring:
    """The forward of `module` as a chain of its children (see the module docstring), or
    NotAChain saying why it is not one."""
    stored = getattr(module, "wiring", None)
    if isinstance(stored, Wiring):  # a converted module keeps the wiring it was read with
        return stored
    if is_sequential(module):
        return Wiring(tuple(n for n, m in module._modules.items() if m is not None), False)
    train, infer = (_chain(_trace(module, mode), module) for mode in (True, False))
    if train != infer:
        raise NotAChain("its forward calls other children in training than in eval")
    return train


def _bn_tail(bn):
    """For a BatchNorm2d (or subclass): the child names its eval forward runs after the
    normalisation (timm's BatchNormAct2d: drop, act), or None when the forward is not
    F.batch_norm of its own tensors followed by a chain of its children."""
    if type(bn) is nn.BatchNorm2d:
        return ()
    if type(bn).forward is nn.BatchNorm2d.forward:
        return ()
    try:
        graph = _trace(bn, False)
    except NotAChain:
        return None
    nodes = list(graph.nodes)
    norms = [n for n in nodes if n.op == "call_function" and n.target is F.batch_norm]
    if len(norms) != 1:
        return None
    norm = norms[0]
    try:
        args = inspect.signature(F.batch_norm).bind(*norm.args, **norm.kwargs).arguments
    except TypeError:
        return None
    own = {"running_mean", "running_var", "weight", "bias"}
    if not (args["input"].op == "placeholder" and args.get("training", False) is False
            and args.get("eps", 1e-5) == bn.eps
            and all(isinstance(args.get(k), fx.Node) and args[k].op == "get_attr"
                    and args[k].target == k for k in own)):
        return None
    tail, node = [], norm
    while len(node.users) == 1:
        (user,) = node.users
        if user.op == "output":
            break
        if not (user.op == "call_module" and user.args == (node,) and not user.kwargs
                and "." not in user.target):
            return None
        tail.append(user.target)
        node = user
    counted = {norm, *[n for n in nodes if n.op in ("placeholder", "output", "get_attr")]}
    counted |= {n for n in nodes if n.op == "call_module" and n.target in tail}
    rest = [n for n in nodes if n not in counted]
    if not all(n.op == "call_function" and n.target in _CHECKS and n not in norm.all_input_nodes
               for n in rest):
        return None
    return tuple(tail)


def act_name(module):
    """The contract's name for the activation an activation module computes, or None: its
    class's name (ACT_NAMES), but for a ReLU6 whose bounds were edited (a Hardtanh then, the
    same rule as ConvBNAct.children_fuse)."""
    if isinstance(module, nn.Hardtanh) and (module.min_val, module.max_val) != (0.0, 6.0):
        return None
    return ACT_NAMES.get(type(module))


def _act_name(node, module):
    """The activation a graph node computes, or None."""
    if node.op == "call_module":
        sub = module.get_submodule(node.target)
        return act_name(sub) or _GATE_NAMES.get(type(sub))
    if node.op == "call_function" and len(node.args) == 1 and set(node.kwargs) <= {"inplace"}:
        return _ACT_FUNCTIONS.get(node.target)
    return None


def _is_pool(node, module, x):
    """Whether node is a global average pool of x, keeping dims."""
    if node.op == "call_method" and node.target == "mean" and node.args[:1] == (x,):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = dims if isinstance(dims, (tuple, list)) else (dims,)  # x.mean(2): one dim
        return (tuple(dims) in ((2, 3), (-2, -1), (-1, -2), (3, 2))
                and node.kwargs.get("keepdim", False) is True)
    if node.op == "call_module" and node.args == (x,):
        pool = module.get_submodule(node.target)
        return (type(pool) is nn.AdaptiveAvgPool2d
                and pool.output_size in (1, (1, 1)))
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        return node.args[:1] == (x,) and node.args[1:] in ((1,), ((1, 1),))
    return False


def _is_fc(node, module):
    if node.op != "call_module":
        return False
    conv = module.get_submodule(node.target)
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.groups == 1 and conv.bias is not None)


def squeeze_excite(module) -> Optional[SEShape]:
    """The shape of a squeeze-excite module, x * gate(fc2(act(fc1(avgpool(x))))), read from
    its eval forward (torchvision's SqueezeExcitation, timm's SqueezeExcite, fastdw's), or
    None."""
    if not list(module.children()):
        return None
    try:
        graph = _trace(module, False)
    except NotAChain:
        return None
    nodes = list(graph.nodes)
    if len(nodes) != 8:  # x, pool, fc1, act, fc2, gate, mul, output
        return None
    x, pool, fc1, act, fc2, gate, mul, out = nodes
    chain = [(pool, x), (fc1, pool), (act, fc1), (fc2, act), (gate, fc2)]
    if not (x.op == "placeholder" and out.args == (mul,) and mul.op == "call_function"
            and mul.target in _MULS and set(mul.args) == {x, gate} and not mul.kwargs
            and all(n.args[:1] == (prev,) for n, prev in chain)
            and _is_pool(pool, module, x) and _is_fc(fc1, module) and _is_fc(fc2, module)):
        return None
    act_name, gate_name = _act_name(act, module), _act_name(gate, module)
    if act_name is None or gate_name not in _GATE_NAMES.values():
        return None
    return SEShape(fc1.target, act_name, fc2.target, gate_name)


def identity_in_eval(module):
    """Whether a parameter-free leaf returns its very input, unchanged, in eval mode (Identity,
    Dropout, timm's DropPath, torchvision's StochasticDepth): one probe call on a random input
    whose magnitudes span many decades."""
    if (list(module.children()) or list(module.parameters(recurse=False))
            or list(module.buffers(recurse=False))):
        return False
    if type(module) is nn.Identity:
        return True
    was = module.training
    module.training = False
    try:
        with torch.no_grad():
            probe = torch.randn(2, 3, 4, 4) * torch.logspace(-6, 6, 96).reshape(2, 3, 4, 4)
            kept = probe.clone()
            out = module(probe)
        return out is probe and torch.equal(out, kept)
    except Exception:  # a module that takes other inputs: not an identity convert can skip
        return False
    finally:
        module.training = was


def atoms(module, path="", top=True):
    """module's eval forward as a list of Atoms (see the module docstring); the paths are
    under `path`. A module convert() made (it keeps its wiring) is read through only at the
    top, for the block around it to fuse its residual; deeper it stays one opaque atom."""
    cls = type(module)
    if "forward" in module.__dict__:  # set on the module: not what its class's forward reads
        return [Atom("opaque", path, module)]
    if isinstance(module, ConvBNAct):  # its unfused forward: its children in order
        return [a for name, child in module.named_children()
                for a in atoms(child, _join(path, name), False)]
    if cls is nn.Conv2d:
        return [Atom("conv", path, module)]
    if isinstance(module, nn.BatchNorm2d):
        tail = _bn_tail(module)
        if tail is None:
            return [Atom("opaque", path, module)]
        rest = [a for name in tail
                for a in atoms(module.get_submodule(name), _join(path, name), False)]
        return [Atom("bn", path, module, len(rest)), *rest]
    if act_name(module) is not None:
        return [Atom("act", path, module, act_name(module))]
    if identity_in_eval(module):
        return [Atom("identity", path, module)]
    se = squeeze_excite(module)
    if se is not None:
        return [Atom("se", path, module, se)]
    try:
        chain = wiring(module)
    except NotAChain:
        return [Atom("opaque", path, module)]
    if chain.residual or (not top and isinstance(getattr(module, "wiring", None), Wiring)):
        return [Atom("opaque", path, module)]
    return [a for name in chain.steps
            for a in atoms(module.get_submodule(name), _join(path, name), False)]


def _join(path, name):
    return f"{path}.{name}" if path else name


def _skip(found, i):
    """The index of the first atom at or after i that is not an identity in eval."""
    while i < len(found) and found[i].kind == "identity":
        i += 1
    return i


def unit_at(found, i) -> Optional[Unit]:
    """The conv -> BN [-> act] unit starting at atom i, or None."""
    if i + 1 >= len(found) or found[i].kind != "conv" or found[i + 1].kind != "bn":
        return None
    j = _skip(found, i + 2)
    if j < len(found) and found[j].kind == "act":
        return Unit(tuple(found[i:j + 1]), found[j].info)
    return Unit(tuple(found[i:i + 2]), "none")


def block_at(found, i) -> Optional[Block]:
    """The inverted-residual block starting at atom i (by shape only), or None."""
    first = unit_at(found, i)
    if first is None:
        return None
    expand, dw, j = None, first, i
    if first.kind == "pointwise":
        j = _skip(found, i + len(first.atoms))
        expand, dw = first, unit_at(found, j)
    if dw is None or dw.kind != "depthwise":
        return None
    j = _skip(found, j + len(dw.atoms))
    se = None
    if j < len(found) and found[j].kind == "se":
        se, j = found[j], _skip(found, j + 1)
    project = unit_at(found, j)
    if project is None or project.kind != "pointwise" or project.act != "none":
        return None
    end = j + len(project.atoms)
    return Block(tuple(found[i:end]), expand, dw, se, project, False)
