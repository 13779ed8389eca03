"""convert(model): swap torchvision's MobileNet building blocks for fastdw's, in place.

Replacements reuse the original Conv2d/BatchNorm2d modules (so parameters, buffers, optimizer
references and state_dict keys are untouched) and only happen where fastdw computes exactly the
same function; anything else (dilated V3 blocks, other activations, sigmoid-gated SE, biased or
asymmetric convs) is left as it was, with its children still converted where they qualify.
"""
from torch import nn
from torchvision.models import mobilenetv2 as _tv_v2
from torchvision.models import mobilenetv3 as _tv_v3
from torchvision.ops.misc import Conv2dNormActivation, SqueezeExcitation

from fastdw.nn.blocks import InvertedResidual, InvertedResidualV3
from fastdw.nn.layers import (
    ACT_NAMES,
    ConvBNAct,
    DWConvBNAct,
    SqueezeExcite,
    symmetric_conv,
)


def _conv_bn_act(module):
    if len(module) not in (2, 3) or type(module[0]) is not nn.Conv2d \
            or type(module[1]) is not nn.BatchNorm2d:
        return None
    conv = module[0]
    act = "none" if len(module) == 2 else ACT_NAMES.get(type(module[2]))
    if act is None or not symmetric_conv(conv):
        return None
    cls = DWConvBNAct if conv.groups == conv.in_channels else ConvBNAct
    return cls.wrap(conv, module[1], act)


def _squeeze_excite(module):
    if (type(module.activation) is not nn.ReLU
            or type(module.scale_activation) is not nn.Hardsigmoid):
        return None
    se = SqueezeExcite(module.fc1.in_channels, module.fc1.out_channels)
    se.fc1, se.fc2 = module.fc1, module.fc2
    return se


def _replacement(module):
    if type(module) is _tv_v2.InvertedResidual and InvertedResidual.fusable(module.conv):
        return InvertedResidual.wrap(module.conv)
    if type(module) is _tv_v3.InvertedResidual and InvertedResidualV3.fusable(module.block):
        return InvertedResidualV3.wrap(module.block)
    if isinstance(module, Conv2dNormActivation):
        return _conv_bn_act(module)
    if type(module) is SqueezeExcitation:
        return _squeeze_excite(module)
    return None


def convert(model: nn.Module) -> nn.Module:
    """Replace every torchvision Conv2dNormActivation, SqueezeExcitation (ReLU/hardsigmoid) and
    MobileNetV2/V3 InvertedResidual inside `model` by its fastdw equivalent; returns `model`.

    The state_dict (keys and tensors) stays identical and outputs stay equal; eval-mode forwards
    then run fused fastdw ops. `model` itself is never replaced, only its submodules.
    """
    for name, child in model.named_children():
        convert(child)  # children first, so a block sees fastdw stages when it is checked
        new = _replacement(child)
        if new is not None:
            new.training = child.training
            setattr(model, name, new)
    return model
