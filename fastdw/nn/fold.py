"""BatchNorm folding for the fused modules' eval forwards, from the values fastdw.nn.cache
compares (cache.value_of): a value cached under a stamp is folded from the stamp's copies."""
from torch import nn

from fastdw.nn.cache import value_of
from fastdw.ops.fold_bn import fold_tensors


def foldable(*bns: nn.BatchNorm2d) -> bool:
    """True when every BN normalises with running statistics, i.e. it can be folded."""
    return all(not bn.training and bn.running_var is not None for bn in bns)


def fold_bn(bn: nn.BatchNorm2d):
    """fastdw.ops.fold_bn(bn) of a foldable bn, from the values cache.value_of gives."""
    return fold_tensors(*map(value_of, (bn.weight, bn.bias, bn.running_mean, bn.running_var)),
                        bn.eps)


def fold_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """(weight, bias) of one conv equal to a bias-free conv followed by eval-mode bn."""
    scale, shift = fold_bn(bn)
    weight = value_of(conv.weight)
    weight = weight * scale.reshape(-1, 1, 1, 1).to(weight.dtype)
    return weight, shift.to(weight.dtype)
