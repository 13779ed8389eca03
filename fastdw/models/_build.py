"""Small pieces every MobileNet builder shares."""
from torch import nn


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
