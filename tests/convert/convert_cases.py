"""What the convert tests share: a small net of timm's layers and blocks (timm_parts:
conftest.py)."""
from torch import nn


def small_timm_net(parts, stem_act, separable_act, *block_args, **block_kwargs):
    """Stem ConvNormAct 3 -> 16 (stride 2), DepthwiseSeparableConv 16 -> 16, InvertedResidual."""
    return nn.Sequential(parts.ConvNormAct(3, 16, 3, stride=2, act_layer=stem_act),
                         parts.DepthwiseSeparableConv(16, 16, act_layer=separable_act),
                         parts.InvertedResidual(16, *block_args, **block_kwargs))
