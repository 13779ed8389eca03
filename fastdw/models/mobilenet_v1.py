"""MobileNetV1 (Howard et al. 2017): a 3x3 stride-2 stem and 13 depthwise-separable blocks.

There is no torchvision MobileNetV1, so the tree is fastdw's own: features.0 is the stem,
features.i (i >= 1) is Sequential(DWConvBNAct, ConvBNAct 1x1), then pool, dropout, linear.
"""
from torch import nn

from fastdw.models._build import MobileNet, check_arguments, init_weights, make_divisible
from fastdw.nn import ConvBNAct, DWConvBNAct, Linear

# (output channels, depthwise stride) of the 13 depthwise-separable blocks.
_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
           (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


class MobileNetV1(MobileNet):
    def __init__(self, width_mult=1.0, depth_multiplier=1, num_classes=1000, dropout=0.001):
        super().__init__()
        check_arguments(width_mult=width_mult, num_classes=num_classes, dropout=dropout,
                        depth_multiplier=depth_multiplier)
        channels = make_divisible(32 * width_mult)
        layers = [ConvBNAct(3, channels, 3, 2)]
        for out, stride in _BLOCKS:
            out = make_divisible(out * width_mult)
            # depth_multiplier: every depthwise conv makes that many outputs per input channel.
            layers.append(nn.Sequential(
                DWConvBNAct(channels, 3, stride, multiplier=depth_multiplier),
                ConvBNAct(channels * depth_multiplier, out, 1)))
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), Linear(channels, num_classes))
        init_weights(self)


def mobilenet_v1(*, width_mult=1.0, depth_multiplier=1, num_classes=1000, dropout=0.001):
    """MobileNetV1 with ReLU6 and BatchNorm; no pretrained weights are provided."""
    return MobileNetV1(width_mult, depth_multiplier, num_classes, dropout)
