"""BatchNorm folding for the fused modules' eval forwards."""
from torch import nn

from fastdw import ops


def foldable(*bns: nn.BatchNorm2d) -> bool:
    """True when every BN normalises with running statistics, i.e. it can be folded."""
    return all(not bn.training and bn.running_var is not None for bn in bns)


def fold_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """(weight, bias) of one conv equal to a bias-free conv followed by eval-mode bn."""
    scale, shift = ops.fold_bn(bn)
    weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
    return weight, shift.to(conv.weight.dtype)
