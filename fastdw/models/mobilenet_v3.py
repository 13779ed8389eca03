"""MobileNetV3 large and small (Howard et al. 2019) with torchvision's module tree, so
checkpoints of either load into the other with strict=True."""
import torch
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, MobileNet_V3_Small_Weights

from fastdw.models import weights as _weights
from fastdw.models._build import MobileNet, check_arguments, init_weights, make_divisible
from fastdw.nn import ConvBNAct, InvertedResidualV3, Linear

# Bottlenecks of the paper's Tables 1 and 2 after the 16-channel stem:
# (kernel, expanded channels, output channels, squeeze-excite, activation, stride).
_LARGE = [(3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2),
          (3, 72, 24, False, "relu", 1), (5, 72, 40, True, "relu", 2),
          (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
          (3, 240, 80, False, "hardswish", 2), (3, 200, 80, False, "hardswish", 1),
          (3, 184, 80, False, "hardswish", 1), (3, 184, 80, False, "hardswish", 1),
          (3, 480, 112, True, "hardswish", 1), (3, 672, 112, True, "hardswish", 1),
          (5, 672, 160, True, "hardswish", 2), (5, 960, 160, True, "hardswish", 1),
          (5, 960, 160, True, "hardswish", 1)]
_SMALL = [(3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2),
          (3, 88, 24, False, "relu", 1), (5, 96, 40, True, "hardswish", 2),
          (5, 240, 40, True, "hardswish", 1), (5, 240, 40, True, "hardswish", 1),
          (5, 120, 48, True, "hardswish", 1), (5, 144, 48, True, "hardswish", 1),
          (5, 288, 96, True, "hardswish", 2), (5, 576, 96, True, "hardswish", 1),
          (5, 576, 96, True, "hardswish", 1)]
# Last-stage channel counts: the last three bottlenecks of both tables (and the classifier's
# hidden width) are halved by reduced_tail.
_LAST_CHANNEL = {"large": 1280, "small": 1024}
_BN = dict(eps=1e-3, momentum=0.01)


class MobileNetV3(MobileNet):
    def __init__(self, arch, width_mult=1.0, reduced_tail=False, num_classes=1000, dropout=0.2):
        super().__init__()
        check_arguments(width_mult=width_mult, num_classes=num_classes, dropout=dropout)
        table = {"large": _LARGE, "small": _SMALL}[arch]
        divider = 2 if reduced_tail else 1

        def width(c):
            return make_divisible(c * width_mult)

        channels = width(16)
        layers = [ConvBNAct(3, channels, 3, 2, act="hardswish", **_BN)]
        for i, (k, expanded, out, se, act, stride) in enumerate(table):
            if i == len(table) - 3:
                out //= divider
            elif i > len(table) - 3:
                expanded, out = expanded // divider, out // divider
            expanded = width(expanded)
            layers.append(InvertedResidualV3(
                channels, k, expanded, width(out), stride, act=act,
                squeeze_channels=make_divisible(expanded // 4) if se else None, **_BN))
            channels = width(out)
        layers.append(ConvBNAct(channels, 6 * channels, 1, act="hardswish", **_BN))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last_channel = width(_LAST_CHANNEL[arch] // divider)
        self.classifier = nn.Sequential(
            Linear(6 * channels, last_channel), nn.Hardswish(inplace=True),
            nn.Dropout(dropout, inplace=True), Linear(last_channel, num_classes))
        init_weights(self)

    def _forward_modules(self, x):  # the pool is a module here (torchvision's tree)
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _build(arch, enum_cls, weights, progress, width_mult, reduced_tail, num_classes, dropout):
    weights = _weights.resolve(weights, enum_cls)
    model = MobileNetV3(arch, width_mult, reduced_tail,
                        _weights.num_classes_for(weights, num_classes), dropout)
    return _weights.load(model, weights, progress)


def mobilenet_v3_large(*, weights=None, progress=True, width_mult=1.0, reduced_tail=False,
                       num_classes=1000, dropout=0.2):
    """MobileNetV3-Large. weights: a MobileNet_V3_Large_Weights member, its name or a file."""
    return _build("large", MobileNet_V3_Large_Weights, weights, progress, width_mult,
                  reduced_tail, num_classes, dropout)


def mobilenet_v3_small(*, weights=None, progress=True, width_mult=1.0, reduced_tail=False,
                       num_classes=1000, dropout=0.2):
    """MobileNetV3-Small. weights: a MobileNet_V3_Small_Weights member, its name or a file."""
    return _build("small", MobileNet_V3_Small_Weights, weights, progress, width_mult,
                  reduced_tail, num_classes, dropout)
