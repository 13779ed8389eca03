"""The oracle the op tests compare against: stock PyTorch (F.conv2d, the per-channel affine a folded
BatchNorm is, torch.nn activation modules) evaluated in float64, written independently of
fastdw.kernels.reference; plus the input factories of the op tests. Results are held to it with
tests/numerics.py (REL_TOL, assert_close)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("nchw", "channels_last", "strided")

ACT_MODULES = {"none": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6,
               "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid, "silu": nn.SiLU}


def feature_map(shape, dtype=torch.float32, layout="nchw", scale=2.0):
    """Random (N, C, H, W) input; 'strided' is a non-contiguous view (every other column)."""
    n, c, h, w = shape
    if layout == "strided":
        return (torch.randn(n, c, h, 2 * w) * scale).to(dtype)[..., ::2]
    x = (torch.randn(shape) * scale).to(dtype)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def random_affine(channels):
    """(scale, shift) as a folded BatchNorm gives them: scale around 1, shift around 0."""
    return torch.empty(channels).uniform_(0.5, 1.5), torch.empty(channels).uniform_(-0.5, 0.5)


def conv_weight(shape, dtype):
    fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else shape[1]
    return (torch.randn(shape) / fan_in ** 0.5).to(dtype)


def _affine_act(y, scale, shift, act):
    y = y * scale.double()[:, None, None] + shift.double()[:, None, None]
    return ACT_MODULES[act]()(y)


def dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act):
    y = F.conv2d(x.double(), weight.double(), None, stride, padding, dilation, groups=x.shape[1])
    return _affine_act(y, scale, shift, act)


def pwconv_bn_act(x, weight, scale, shift, act, residual=None):
    y = F.conv2d(x.double(), weight.double().reshape(weight.shape[0], -1, 1, 1))
    y = _affine_act(y, scale, shift, act)
    return y if residual is None else y + residual.double()


# The squeeze-excite gates (torchvision's SqueezeExcitation scale_activation).
GATE_MODULES = {"hardsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid}


def squeeze_excite(h, w1, b1, w2, b2, se_act="relu", se_gate="hardsigmoid"):
    pooled = F.adaptive_avg_pool2d(h, 1)
    gate = ACT_MODULES[se_act]()(
        F.conv2d(pooled, w1.double().reshape(*w1.shape[:2], 1, 1), b1.double()))
    gate = GATE_MODULES[se_gate]()(
        F.conv2d(gate, w2.double().reshape(*w2.shape[:2], 1, 1), b2.double()))
    return h * gate


def inverted_residual(x, expand, dw, project, se, stride, act, residual=True, se_act="relu",
                      se_gate="hardsigmoid"):
    """expand/dw/project are (weight, scale, shift) triples; expand and se may be None; se_act
    and se_gate are the squeeze-excite's inner activation and gate."""
    h = x.double()
    if expand is not None:
        h = pwconv_bn_act(h, *expand, act)
    k = dw[0].shape[-1]
    h = dwconv_bn_act(h, *dw, stride, (k - 1) // 2, 1, act)
    if se is not None:
        h = squeeze_excite(h, *se, se_act, se_gate)
    y = pwconv_bn_act(h, *project, "none")
    if residual and stride == 1 and x.shape[1] == y.shape[1]:
        y = y + x.double()
    return y
