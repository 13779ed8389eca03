"""fastdw::inverted_residual: a whole MobileNetV2/V3 block in one op.

    h = act(expand_1x1(x) * expand_scale + expand_shift)       (skipped when expand_w is None)
    h = act(depthwise_kxk(h, stride) * dw_scale + dw_shift)     (padding (k-1)//2)
    h = h * se_gate(fc2(se_act(fc1(avgpool(h)))))               (only with squeeze-excite weights)
    y = project_1x1(h) * project_scale + project_shift  (+ x when residual)

se_act is any act name (fastdw.contract.ACTIVATIONS), se_gate one of contract.SE_GATES:
relu / hardsigmoid by default (MobileNetV3), silu / sigmoid for EfficientNet.

The block's tensors travel together as one fastdw.contract.BlockWeights: the custom ops'
schemas are generated from its fields, and every backend takes it whole. After them come the
block's options, (stride, act, residual, se_act, se_gate) in this order everywhere (the
schemas, the backends' kernels, the C++ kernel), then at the custom ops the backend.
"""
from typing import Optional

import torch
from torch import Tensor

from fastdw import backend as _backend
from fastdw.contract import (BLOCK_OPTIONAL, SE_GATES, BlockWeights, adds_residual,
                             conv_output_size, same_padding)
from fastdw.ops import checks, dispatch
from fastdw.ops._outputs import as_grad, empty_grad, empty_output

_BLOCK_SIZE = len(BlockWeights._fields)
_CONV_WEIGHTS = ("expand_w", "dw_w", "project_w", "se_w1", "se_w2")
_SE_FIELDS = ("se_w1", "se_b1", "se_w2", "se_b2")


def _schema(leading, returns):
    """A custom op schema: `leading` arguments, the block's tensors, then its options."""
    block = ", ".join(f"Tensor{'?' if name in BLOCK_OPTIONAL else ''} {name}"
                      for name in BlockWeights._fields)
    return (f"({leading}, {block}, int stride, str act, bool residual, str se_act, "
            f"str se_gate, str backend) -> {returns}")


def split_schema_arguments(args):
    """(BlockWeights, options, backend) out of a schema's trailing arguments: options are the
    kernels' arguments after the block, (stride, act, residual, se_act, se_gate)."""
    return BlockWeights._make(args[:_BLOCK_SIZE]), args[_BLOCK_SIZE:-1], args[-1]


def _forward(x, *args):
    block, options, backend = split_schema_arguments(args)
    return dispatch.run_kernel(backend, "inverted_residual", x, block, *options)


def _forward_fake(x, *args):
    block, (stride, *_), _ = split_schema_arguments(args)
    k = block.dw_w.shape[-1]
    out = [conv_output_size(s, k, stride, same_padding(k), 1) for s in x.shape[2:]]
    return empty_output(x, block.project_w.shape[0], *out)


def _backward_op(grad, x, *args):
    """Gradients of x and of every block tensor that is not None, in schema order."""
    block, options, backend = split_schema_arguments(args)
    grad_x, grad_block = dispatch.run_kernel(backend, "inverted_residual_backward", grad, x,
                                             block, *options)
    return [as_grad(grad_x, x), *(as_grad(g, t) for g, t in zip(grad_block, block)
                                  if t is not None)]


def _backward_fake(grad, x, *args):
    return [empty_grad(t) for t in (x, *args[:_BLOCK_SIZE]) if t is not None]


_inverted_residual = torch.library.custom_op(
    "fastdw::inverted_residual", _forward, mutates_args=(), schema=_schema("Tensor x", "Tensor"))
_inverted_residual.register_fake(_forward_fake)
_inverted_residual_backward = torch.library.custom_op(
    "fastdw::inverted_residual_backward", _backward_op, mutates_args=(),
    schema=_schema("Tensor grad, Tensor x", "Tensor[]"))
_inverted_residual_backward.register_fake(_backward_fake)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:1 + _BLOCK_SIZE])  # x and the block (None where absent)
    ctx.options = inputs[1 + _BLOCK_SIZE:]            # the block's options, the backend


def _backward(ctx, grad):
    x, *block = ctx.saved_tensors
    grads = iter(dispatch.backward(
        "inverted_residual", grad, (x, *block), (x, BlockWeights._make(block), *ctx.options[:-1]),
        lambda: torch.ops.fastdw.inverted_residual_backward(grad, x, *block, *ctx.options)))
    return (next(grads), *(None if t is None else next(grads) for t in block),
            *(None for _ in ctx.options))


_inverted_residual.register_autograd(_backward, setup_context=_setup_context)


def inverted_residual(x: Tensor, expand_w: Optional[Tensor], expand_scale: Optional[Tensor],
                      expand_shift: Optional[Tensor], dw_w: Tensor, dw_scale: Optional[Tensor],
                      dw_shift: Optional[Tensor], project_w: Tensor,
                      project_scale: Optional[Tensor], project_shift: Optional[Tensor], *,
                      stride: int = 1, act: str = "relu6", se_w1: Optional[Tensor] = None,
                      se_b1: Optional[Tensor] = None, se_w2: Optional[Tensor] = None,
                      se_b2: Optional[Tensor] = None, residual: bool = True,
                      se_act: str = "relu", se_gate: str = "hardsigmoid",
                      backend: Optional[str] = None) -> Tensor:
    """A fused inverted-residual block (see the module docstring for the math).

    x: (N, C_in, H, W). expand_w: (hidden, C_in[, 1, 1]) or None for no expansion (hidden =
    C_in). dw_w: (hidden, 1, k, k). project_w: (C_out, hidden[, 1, 1]). Scales/shifts are
    per-channel vectors or None (1 / 0). Squeeze-excite: se_w1 (S, hidden[, 1, 1]), se_b1 (S,),
    se_w2 (hidden, S[, 1, 1]), se_b2 (hidden,), all four or none; `se_act` is the activation
    between its two 1x1 convs (a name of fastdw.contract.ACTIVATIONS) and `se_gate` the gate
    (fastdw.contract.SE_GATES: "hardsigmoid" or "sigmoid"). `act` is the activation of the
    expand and depthwise stages; `residual` adds x when stride is 1 and C_in == C_out.
    """
    # The tensor parameters are named as BlockWeights' fields, in its order (a test holds them
    # equal). A plain list is what the C++ kernel takes, and costs least per call
    # (bench/op_overhead.py): the BlockWeights is made only for the checked route.
    weights = [expand_w, expand_scale, expand_shift, dw_w, dw_scale, dw_shift, project_w,
               project_scale, project_shift, se_w1, se_b1, se_w2, se_b2]
    out = _kernel_first(x, weights, stride, act, residual, se_act, se_gate, backend)
    if out is not None:
        return out
    return _checked(x, BlockWeights._make(weights), stride, act, residual, se_act, se_gate,
                    backend)


def route(x, block, stride=1, act="relu6", residual=True, se_act="relu", se_gate="hardsigmoid",
          backend=None):
    """inverted_residual with the block's tensors as one BlockWeights: what a BoundOp
    (fastdw.ops.bind) calls, down fastdw.ops.dispatch's one route."""
    out = _kernel_first(x, block, stride, act, residual, se_act, se_gate, backend)
    if out is not None:
        return out
    return _checked(x, block, stride, act, residual, se_act, se_gate, backend)


def _kernel_first(x, weights, stride, act, residual, se_act, se_gate, backend):
    """Step 1 of the route (fastdw.ops.dispatch): the C++ kernel's output, or None where the
    call is not its to take."""
    if dispatch.cpp_direct("inverted_residual", x, weights, backend):
        args = cpp_args(x.shape[1], weights, stride=stride, act=act, residual=residual,
                        se_act=se_act, se_gate=se_gate)
        if args is not None:
            return dispatch.try_cpp("inverted_residual", x, *args)
    return None


def _checked(x, block, stride, act, residual, se_act, se_gate, backend):
    """Steps 2 to 4 of the route: the Python checks, the backend, its kernel."""
    # Under autocast x and the conv weights take the autocast dtype (checks.autocast).
    x, *weights = checks.autocast(x, *(getattr(block, name) for name in _CONV_WEIGHTS))
    block = block._replace(**dict(zip(_CONV_WEIGHTS, weights)))
    checks.feature_map(x)
    block, c_out = _checked_stages(x, block)
    checks.integer(stride, "stride", 1)
    checks.activation(act)
    checks.activation(se_act, "se_act")
    checks.activation(se_gate, "se_gate", SE_GATES)
    k = block.dw_w.shape[-1]
    for size in x.shape[2:]:
        checks.conv_output_size(size, k, stride, same_padding(k), 1, "x")
    block = _checked_squeeze_excite(x, block)
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool, got {type(residual).__name__}")
    residual = residual and adds_residual(stride, x.shape[1], c_out)
    options = (stride, act, residual, se_act, se_gate)
    return dispatch.run(_inverted_residual, "inverted_residual", (x, *block),
                        (x, *block, *options),
                        _backend.resolve(backend, x.device.type, "inverted_residual"),
                        kernel_args=(x, block, *options))


def _checked_stages(x, block):
    """(block with the expand, depthwise and project stages checked, their 1x1 weights 2-D and
    absent vectors filled in; C_out), or a ValueError / TypeError naming the bad tensor."""
    b = block._asdict()
    c_in = x.shape[1]
    if b["expand_w"] is None:
        for name in ("expand_scale", "expand_shift"):
            if b[name] is not None:
                raise ValueError(f"{name} is given but expand_w is None (no expansion)")
        hidden = c_in
    else:
        b["expand_w"] = checks.one_by_one(b["expand_w"], "expand_w", x, c_in)
        hidden = b["expand_w"].shape[0]
        b["expand_scale"] = checks.per_channel(b["expand_scale"], "expand_scale", x, hidden, 1.0)
        b["expand_shift"] = checks.per_channel(b["expand_shift"], "expand_shift", x, hidden, 0.0)
    checks.like_input(b["dw_w"], "dw_w", x, (hidden, 1, None, None))
    k = b["dw_w"].shape[-1]
    if b["dw_w"].shape[-2] != k or k % 2 == 0:
        raise ValueError(f"dw_w must have an odd square k x k window, got "
                         f"{tuple(b['dw_w'].shape)}")
    b["dw_scale"] = checks.per_channel(b["dw_scale"], "dw_scale", x, hidden, 1.0)
    b["dw_shift"] = checks.per_channel(b["dw_shift"], "dw_shift", x, hidden, 0.0)
    b["project_w"] = checks.one_by_one(b["project_w"], "project_w", x, hidden)
    c_out = b["project_w"].shape[0]
    b["project_scale"] = checks.per_channel(b["project_scale"], "project_scale", x, c_out, 1.0)
    b["project_shift"] = checks.per_channel(b["project_shift"], "project_shift", x, c_out, 0.0)
    return BlockWeights(**b), c_out


def _checked_squeeze_excite(x, block):
    """block with its squeeze-excite entries checked (all four or none; 1x1 weights 2-D)."""
    b = block._asdict()
    hidden = b["dw_w"].shape[0]
    if any(b[name] is not None for name in _SE_FIELDS):
        if any(b[name] is None for name in _SE_FIELDS):
            raise ValueError("squeeze-excite needs all of se_w1, se_b1, se_w2, se_b2, or none")
        b["se_w1"] = checks.one_by_one(b["se_w1"], "se_w1", x, hidden)
        squeeze = b["se_w1"].shape[0]
        b["se_b1"] = checks.per_channel(b["se_b1"], "se_b1", x, squeeze, 0.0)
        b["se_w2"] = checks.one_by_one(b["se_w2"], "se_w2", x, squeeze)
        checks.like_input(b["se_w2"], "se_w2", x, (hidden, squeeze))
        b["se_b2"] = checks.per_channel(b["se_b2"], "se_b2", x, hidden, 0.0)
    return BlockWeights(**b)


_REQUIRED = [i for i, name in enumerate(BlockWeights._fields) if name not in BLOCK_OPTIONAL]
_EXPAND = [BlockWeights._fields.index(n) for n in ("expand_w", "expand_scale", "expand_shift")]
_PROJECT_W = BlockWeights._fields.index("project_w")
_SQUEEZE_EXCITE = [BlockWeights._fields.index(n) for n in _SE_FIELDS]


def cpp_args(in_channels, weights, *, stride=1, act="relu6", residual=True, se_act="relu",
             se_gate="hardsigmoid"):
    """The C++ kernel's arguments after x for a call on inputs of `in_channels` channels, with
    the block's tensors `weights` (a BlockWeights or a list in its order), or None where the
    call is not the kernel's (options of other types than the op takes, absent vectors or
    squeeze-excite biases the op would fill in). The kernel checks everything else itself, and
    takes 1x1 weights 2-D or 4-D. The block goes as a list: torch.ops converts a list faster
    than a tuple."""
    if not (type(stride) is int and type(act) is str and type(residual) is bool
            and type(se_act) is str and type(se_gate) is str):
        return None
    weights = list(weights)
    for i in _REQUIRED:
        if weights[i] is None:
            return None
    expand_w, expand_scale, expand_shift = (weights[i] for i in _EXPAND)
    if expand_w is not None and (expand_scale is None or expand_shift is None):
        return None
    if len({weights[i] is None for i in _SQUEEZE_EXCITE}) != 1:
        return None
    # The op drops a residual that cannot be added; the kernel would refuse it.
    project_w = weights[_PROJECT_W]
    add = (residual and project_w.dim() in (2, 4)
           and adds_residual(stride, in_channels, project_w.shape[0]))
    return weights, stride, act, add, se_act, se_gate
