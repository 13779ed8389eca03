"""Small pieces every MobileNet builder shares, and the models' common base class."""
import torch
from torch import nn

from fastdw.models.eval_program import eval_forward
from fastdw.nn.cache import CachedForward


class MobileNet(CachedForward, nn.Module):
    """Base of fastdw's MobileNets: classifier(flatten(global_avg_pool(features(x)))). Under
    no_grad in eval mode on cpp the forward runs the model as one C++ program
    (fastdw.models.eval_program), otherwise module by module (_forward_modules). On a CUDA
    device the feature maps are channels_last from the stem on: its ConvBNAct converts an NCHW
    input once (fastdw.nn.layers.feature_layout), and every fastdw op after it gets and returns
    channels_last."""

    def forward(self, x):
        return eval_forward(self, x, self._forward_modules)

    def _forward_modules(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def make_divisible(value, divisor=8, min_value=None):
    """Round a channel count to a multiple of `divisor`, never going more than 10% below it
    (the rounding rule of the MobileNet reference implementations)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def init_weights(model: nn.Module):
    """He (fan-out) init for convs, identity BatchNorm, small-normal linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def check_arguments(*, width_mult, num_classes, dropout, **counts):
    """Builder hyper-parameters: width_mult > 0, dropout in [0, 1], num_classes and every other
    keyword (depth_multiplier, round_nearest) an int >= 1; errors name the argument."""
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)):
        raise TypeError(f"width_mult must be a number, got {type(width_mult).__name__}")
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise TypeError(f"dropout must be a number, got {type(dropout).__name__}")
    if not 0 <= dropout <= 1:
        raise ValueError(f"dropout must be in [0, 1], got {dropout}")
    for name, value in dict(num_classes=num_classes, **counts).items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
