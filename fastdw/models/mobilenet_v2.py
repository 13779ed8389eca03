"""MobileNetV2 (Sandler et al. 2018) with torchvision's module tree, so checkpoints of either
load into the other with strict=True."""
from torch import nn
from torchvision.models import MobileNet_V2_Weights

from fastdw.models import weights as _weights
from fastdw.models._build import MobileNet, check_arguments, init_weights, make_divisible
from fastdw.nn import ConvBNAct, InvertedResidual, Linear

# Stages of the paper's Table 2: (expand ratio t, channels c, repeats n, first stride s).
_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(MobileNet):
    def __init__(self, num_classes=1000, width_mult=1.0, round_nearest=8, dropout=0.2):
        super().__init__()
        check_arguments(width_mult=width_mult, num_classes=num_classes, dropout=dropout,
                        round_nearest=round_nearest)
        channels = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        layers = [ConvBNAct(3, channels, 3, 2)]
        for t, c, n, s in _STAGES:
            out = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        layers.append(ConvBNAct(channels, self.last_channel, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout),
                                        Linear(self.last_channel, num_classes))
        init_weights(self)


def mobilenet_v2(*, weights=None, progress=True, width_mult=1.0, round_nearest=8,
                 num_classes=1000, dropout=0.2):
    """MobileNetV2. weights: a MobileNet_V2_Weights member, its name ("IMAGENET1K_V1",
    "DEFAULT", ...) or a checkpoint file path; see fastdw.models.weights for where enum
    checkpoints are looked for."""
    weights = _weights.resolve(weights, MobileNet_V2_Weights)
    model = MobileNetV2(_weights.num_classes_for(weights, num_classes), width_mult,
                        round_nearest, dropout)
    return _weights.load(model, weights, progress)
