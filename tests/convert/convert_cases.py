"""What the convert tests share: whether fastdw's SE takes EfficientNet's gate, and a small
net of timm's layers and blocks (timm_parts: conftest.py)."""
import inspect

from torch import nn

import fastdw.nn as fnn

# Whether fastdw's squeeze-excite takes an act and a gate (EfficientNet's silu / sigmoid); until
# it does, convert() leaves such SEs, saying so.
SE_GATES = "gate" in inspect.signature(fnn.SqueezeExcite).parameters


def small_timm_net(parts, stem_act, separable_act, *block_args, **block_kwargs):
    """Stem ConvNormAct 3 -> 16 (stride 2), DepthwiseSeparableConv 16 -> 16, InvertedResidual."""
    return nn.Sequential(parts.ConvNormAct(3, 16, 3, stride=2, act_layer=stem_act),
                         parts.DepthwiseSeparableConv(16, 16, act_layer=separable_act),
                         parts.InvertedResidual(16, *block_args, **block_kwargs))
