"""Fused modules with torchvision-compatible parameter names, and convert() for torchvision
models. Eval-mode forwards fold BatchNorm and run one fastdw op per layer or block."""
from fastdw.nn.blocks import InvertedResidual, InvertedResidualV3
from fastdw.nn.convert import convert
from fastdw.nn.freeze import FrozenModel, freeze
from fastdw.nn.layers import ConvBNAct, DWConvBNAct, Linear, SqueezeExcite

__all__ = ["ConvBNAct", "DWConvBNAct", "SqueezeExcite", "InvertedResidual",
           "InvertedResidualV3", "Linear", "convert", "freeze", "FrozenModel"]
