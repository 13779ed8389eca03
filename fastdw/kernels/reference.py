"""The reference backend: every fastdw op as a composite of stock PyTorch ops.

It is the CPU fallback and the oracle every other backend is tested against, so it is written
to be obviously correct, not fast: it computes in `compute_dtype` (fp32 for fp16/bf16 inputs),
returns the input's dtype in the input's memory format. Backward passes recompute the forward
and apply stock aten backward ops stage by stage.

Kernel contract shared by all backends (the public ops in fastdw.ops normalise to it):
  x (N, C, H, W); depthwise weight (C*m, 1, k, k); 1x1 weights 2-D (C_out, C_in);
  scale/shift (C_out,) always present; an inverted-residual block's tensors as one
  fastdw.contract.BlockWeights (squeeze-excite weights 2-D, biases 1-D; expand and
  squeeze-excite entries None where the block has no such stage), then its options stride, act,
  residual, se_act, se_gate (the squeeze-excite's inner activation and gate, passed whether or
  not the block has one).
"""
import torch
import torch.nn.functional as F

from fastdw.contract import (ACTIVATIONS, SE_GATES, BlockWeights, compute_dtype,
                             output_memory_format, same_padding)

DEVICES = None  # stock ops run on every device
NOTES = "stock PyTorch ops; the fallback and the test oracle"


def _finish(y, x):
    return y.to(x.dtype).contiguous(memory_format=output_memory_format(x))


def _epilogue(y, scale, shift, act):
    return ACTIVATIONS[act](y * scale.to(y.dtype)[:, None, None] + shift.to(y.dtype)[:, None, None])


def _dw(h, weight, scale, shift, stride, padding, dilation, act):
    y = F.conv2d(h, weight.to(h.dtype), None, stride, padding, dilation, groups=h.shape[1])
    return _epilogue(y, scale, shift, act)


def _pw(h, weight, scale, shift, act):
    return _epilogue(F.conv2d(h, weight.to(h.dtype)[:, :, None, None]), scale, shift, act)


def squeeze_excite(h, w1, b1, w2, b2, se_act, se_gate):
    # torchvision's SqueezeExcitation: avg-pool -> fc1 -> se_act -> fc2 -> se_gate -> scale.
    pooled = h.mean((2, 3))
    hidden = ACTIVATIONS[se_act](F.linear(pooled, w1.to(h.dtype), b1.to(h.dtype)))
    gate = SE_GATES[se_gate](F.linear(hidden, w2.to(h.dtype), b2.to(h.dtype)))
    return h * gate[:, :, None, None]


def dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act):
    h = x.to(compute_dtype(x.dtype))
    return _finish(_dw(h, weight, scale, shift, stride, padding, dilation, act), x)


def pwconv_bn_act(x, weight, scale, shift, act, residual):
    y = _pw(x.to(compute_dtype(x.dtype)), weight, scale, shift, act)
    if residual is not None:
        y = y + residual.to(y.dtype)
    return _finish(y, x)


def inverted_residual(x, weights, stride, act, residual, se_act, se_gate):
    w = weights
    h = x.to(compute_dtype(x.dtype))
    if w.expand_w is not None:
        h = _pw(h, w.expand_w, w.expand_scale, w.expand_shift, act)
    h = _dw(h, w.dw_w, w.dw_scale, w.dw_shift, stride, same_padding(w.dw_w.shape[-1]), 1, act)
    if w.se_w1 is not None:
        h = squeeze_excite(h, w.se_w1, w.se_b1, w.se_w2, w.se_b2, se_act, se_gate)
    y = _pw(h, w.project_w, w.project_scale, w.project_shift, "none")
    if residual:
        y = y + x.to(y.dtype)
    return _finish(y, x)


# d act(u) / du applied to an incoming gradient g, as stock aten backward ops, for the act
# names and the squeeze-excite gates (contract.ACTIVATIONS, contract.SE_GATES).
_ACT_BACKWARD = {
    "none": lambda g, u: g,
    "relu": lambda g, u: torch.ops.aten.threshold_backward(g, u, 0),
    "relu6": lambda g, u: torch.ops.aten.hardtanh_backward(g, u, 0.0, 6.0),
    "hardswish": torch.ops.aten.hardswish_backward,
    "hardsigmoid": torch.ops.aten.hardsigmoid_backward,
    "silu": torch.ops.aten.silu_backward,
    "sigmoid": lambda g, u: torch.ops.aten.sigmoid_backward(g, torch.sigmoid(u)),
}


def _conv_bn_act_backward(grad, h, weight, scale, shift, stride, padding, dilation, groups, act):
    """y = act(conv(h, weight) * scale + shift), all in one dtype: gradients of h, weight, scale,
    shift. The pre-activation is recomputed rather than saved by the forward."""
    z = F.conv2d(h, weight, None, stride, padding, dilation, groups)
    g = _ACT_BACKWARD[act](grad, z * scale[:, None, None] + shift[:, None, None])
    grad_shift = g.sum((0, 2, 3))
    grad_scale = (g * z).sum((0, 2, 3))
    grad_h, grad_weight, _ = torch.ops.aten.convolution_backward(
        g * scale[:, None, None], h, weight, None, [stride] * 2, [padding] * 2, [dilation] * 2,
        False, [0, 0], groups, [True, True, False])
    return grad_h, grad_weight, grad_scale, grad_shift


def squeeze_excite_backward(grad, h, w1, b1, w2, b2, se_act, se_gate):
    """Gradients of h, w1, b1, w2, b2 for out = h * se_gate(fc2(se_act(fc1(mean_hw(h)))))."""
    pooled = h.mean((2, 3))
    u1 = F.linear(pooled, w1, b1)
    a = ACTIVATIONS[se_act](u1)
    u2 = F.linear(a, w2, b2)
    gate = SE_GATES[se_gate](u2)
    g_u2 = _ACT_BACKWARD[se_gate]((grad * h).sum((2, 3)), u2)
    g_u1 = _ACT_BACKWARD[se_act](g_u2 @ w2, u1)
    g_pooled = g_u1 @ w1
    grad_h = grad * gate[:, :, None, None] + g_pooled[:, :, None, None] / (h.shape[2] * h.shape[3])
    return grad_h, g_u1.t() @ pooled, g_u1.sum(0), g_u2.t() @ a, g_u2.sum(0)


def _in_compute_dtype(x, *tensors):
    cd = compute_dtype(x.dtype)
    return [None if t is None else t.to(cd) for t in tensors]


def dwconv_bn_act_backward(grad, x, weight, scale, shift, stride, padding, dilation, act):
    grad, h, weight, scale, shift = _in_compute_dtype(x, grad, x, weight, scale, shift)
    return list(_conv_bn_act_backward(grad, h, weight, scale, shift, stride, padding, dilation,
                                      h.shape[1], act))


def pwconv_bn_act_backward(grad, x, weight, scale, shift, act):
    grad, h, weight, scale, shift = _in_compute_dtype(x, grad, x, weight, scale, shift)
    grads = _conv_bn_act_backward(grad, h, weight[:, :, None, None], scale, shift, 1, 0, 1, 1, act)
    return [grads[0], grads[1].flatten(1), *grads[2:]]


def inverted_residual_backward(grad, x, weights, stride, act, residual, se_act, se_gate):
    """(gradient of x, BlockWeights of the weights' gradients, None where a weight is None):
    the forward is recomputed stage by stage, then each stage's backward runs in reverse."""
    grad, x_c = _in_compute_dtype(x, grad, x)
    w = BlockWeights(*_in_compute_dtype(x, *weights))
    pad = same_padding(w.dw_w.shape[-1])
    expanded = (x_c if w.expand_w is None
                else _pw(x_c, w.expand_w, w.expand_scale, w.expand_shift, act))
    dw_out = _dw(expanded, w.dw_w, w.dw_scale, w.dw_shift, stride, pad, 1, act)
    se = (w.se_w1, w.se_b1, w.se_w2, w.se_b2)
    se_out = dw_out if w.se_w1 is None else squeeze_excite(dw_out, *se, se_act, se_gate)

    g_h, g_pw, g_ps, g_pb = _conv_bn_act_backward(
        grad, se_out, w.project_w[:, :, None, None], w.project_scale, w.project_shift, 1, 0, 1,
        1, "none")
    grads = {"project_w": g_pw.flatten(1), "project_scale": g_ps, "project_shift": g_pb}
    if w.se_w1 is not None:
        g_h, *g_se = squeeze_excite_backward(g_h, dw_out, *se, se_act, se_gate)
        grads.update(zip(("se_w1", "se_b1", "se_w2", "se_b2"), g_se))
    g_h, *g_dw = _conv_bn_act_backward(g_h, expanded, w.dw_w, w.dw_scale, w.dw_shift, stride,
                                       pad, 1, expanded.shape[1], act)
    grads.update(zip(("dw_w", "dw_scale", "dw_shift"), g_dw))
    if w.expand_w is not None:
        g_h, g_ew, g_es, g_eb = _conv_bn_act_backward(
            g_h, x_c, w.expand_w[:, :, None, None], w.expand_scale, w.expand_shift, 1, 0, 1, 1,
            act)
        grads.update(expand_w=g_ew.flatten(1), expand_scale=g_es, expand_shift=g_eb)
    grad_x = g_h + grad if residual else g_h
    return grad_x, BlockWeights(**{name: grads.get(name) for name in BlockWeights._fields})
