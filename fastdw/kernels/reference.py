"""The reference backend: every fastdw op as a composite of stock PyTorch ops.

It is the CPU fallback and the oracle every other backend is tested against, so it is written
to be obviously correct, not fast: it computes in `compute_dtype` (fp32 for fp16/bf16 inputs),
returns the input's dtype in the input's memory format, and its backward passes are
`torch.func.vjp` of these same forward functions.

Kernel contract shared by all backends (the public ops in fastdw.ops normalise to it):
  x (N, C, H, W); depthwise weight (C*m, 1, k, k); 1x1 weights 2-D (C_out, C_in);
  scale/shift (C_out,) always present; squeeze-excite weights 2-D, biases 1-D.
"""
import torch
import torch.nn.functional as F

from fastdw._common import ACTIVATIONS, compute_dtype, output_memory_format

DEVICES = ("cpu", "cuda")
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


def _squeeze_excite(h, w1, b1, w2, b2):
    # torchvision's SqueezeExcitation: avg-pool -> fc1 -> ReLU -> fc2 -> hardsigmoid -> scale.
    pooled = h.mean((2, 3))
    hidden = F.relu(F.linear(pooled, w1.to(h.dtype), b1.to(h.dtype)))
    gate = F.hardsigmoid(F.linear(hidden, w2.to(h.dtype), b2.to(h.dtype)))
    return h * gate[:, :, None, None]


def dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act):
    h = x.to(compute_dtype(x.dtype))
    return _finish(_dw(h, weight, scale, shift, stride, padding, dilation, act), x)


def pwconv_bn_act(x, weight, scale, shift, act, residual):
    y = _pw(x.to(compute_dtype(x.dtype)), weight, scale, shift, act)
    if residual is not None:
        y = y + residual.to(y.dtype)
    return _finish(y, x)


def inverted_residual(x, expand_w, expand_scale, expand_shift, dw_w, dw_scale, dw_shift,
                      project_w, project_scale, project_shift, stride, act,
                      se_w1, se_b1, se_w2, se_b2, residual):
    h = x.to(compute_dtype(x.dtype))
    if expand_w is not None:
        h = _pw(h, expand_w, expand_scale, expand_shift, act)
    h = _dw(h, dw_w, dw_scale, dw_shift, stride, (dw_w.shape[-1] - 1) // 2, 1, act)
    if se_w1 is not None:
        h = _squeeze_excite(h, se_w1, se_b1, se_w2, se_b2)
    y = _pw(h, project_w, project_scale, project_shift, "none")
    if residual:
        y = y + x.to(y.dtype)
    return _finish(y, x)


def _vjp(forward, primals, grad):
    _, pullback = torch.func.vjp(forward, *primals)
    return list(pullback(grad))


def dwconv_bn_act_backward(grad, x, weight, scale, shift, stride, padding, dilation, act):
    def forward(x, weight, scale, shift):
        return dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act)
    return _vjp(forward, (x, weight, scale, shift), grad)


def pwconv_bn_act_backward(grad, x, weight, scale, shift, act):
    def forward(x, weight, scale, shift):
        return pwconv_bn_act(x, weight, scale, shift, act, None)
    return _vjp(forward, (x, weight, scale, shift), grad)


def inverted_residual_backward(grad, x, expand_w, expand_scale, expand_shift, dw_w, dw_scale,
                               dw_shift, project_w, project_scale, project_shift, stride, act,
                               se_w1, se_b1, se_w2, se_b2, residual):
    """Gradients of every tensor argument that is not None, in argument order."""
    args = [x, expand_w, expand_scale, expand_shift, dw_w, dw_scale, dw_shift,
            project_w, project_scale, project_shift, se_w1, se_b1, se_w2, se_b2]
    present = [i for i, a in enumerate(args) if a is not None]

    def forward(*tensors):
        full = list(args)
        for i, t in zip(present, tensors):
            full[i] = t
        return inverted_residual(*full[:10], stride, act, *full[10:], residual)
    return _vjp(forward, [args[i] for i in present], grad)
