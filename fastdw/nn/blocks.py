"""Inverted-residual blocks (MobileNetV2 and V3) with torchvision's module trees.

Both styles are expand 1x1 (optional) -> depthwise k x k -> squeeze-excite (V3, optional) ->
project 1x1 + BN, plus the input when the shapes allow. They differ only in how torchvision laid
out the modules, so one base class holds the behaviour and each subclass says where its stages
sit:
  V2 (`conv`):  [ConvBNAct expand], DWConvBNAct, Conv2d project, BatchNorm2d
  V3 (`block`): [ConvBNAct expand], DWConvBNAct, [SqueezeExcite], ConvBNAct(act="none") project
In eval mode (every BN folded) a block is exactly one fastdw.ops.inverted_residual call, bound
once per change of the block (fastdw.ops.bind, cached under fastdw.nn.cache's stamp). A block
whose stages are not what the op computes, or carry hooks, runs them as they are (stages_fuse).
"""
import torch
from torch import nn

from fastdw import ops, torch_internals
from fastdw.contract import SE_GATES, BlockWeights, adds_residual, same_padding
from fastdw.nn.cache import CachedForward, cached
from fastdw.nn.fold import fold_bn, foldable
from fastdw.nn.layers import (ACT_MODULES, RUN_CHILDREN, ConvBNAct, DWConvBNAct, SqueezeExcite,
                              feature_layout, plain, traced_as_leaf)
from fastdw.ops.checks import activation, matrix


# The classes of the modules a fused block stands in for.
_STAGE_CLASSES = {nn.Sequential, ConvBNAct, DWConvBNAct, SqueezeExcite, nn.Conv2d, nn.BatchNorm2d,
                  *ACT_MODULES.values()}


class InvertedResidualBlock(CachedForward, nn.Module):
    _layers_name = None  # "conv" (V2) or "block" (V3): the Sequential holding the stages

    def _setup(self, layers, in_channels, out_channels, stride):
        setattr(self, self._layers_name, nn.Sequential(*layers))
        self.stride = stride
        self.out_channels = out_channels
        self.use_res_connect = adds_residual(stride, in_channels, out_channels)
        self._is_cn = stride > 1  # torchvision's marker for stage boundaries (detection heads)

    @classmethod
    def wrap(cls, layers: nn.Sequential):
        """A block around existing stage modules (parameters shared, not copied); call only
        when fusable(layers)."""
        expand, dw, _, project, _ = cls._stages_of(layers)
        block = cls.__new__(cls)
        nn.Module.__init__(block)
        in_channels = (dw if expand is None else expand)[0].in_channels
        block._setup(list(layers), in_channels, project.out_channels, dw[0].stride[0])
        return block

    @staticmethod
    def _stages_of(layers):
        """(expand ConvBNAct or None, DWConvBNAct, SqueezeExcite or None, project conv, BN)."""
        raise NotImplementedError

    @classmethod
    def fusable(cls, layers) -> bool:
        """Whether `layers` has the shape the fused op computes (used by convert())."""
        try:
            expand, dw, se, project, project_bn = cls._stages_of(layers)
        except (IndexError, TypeError, ValueError):
            return False
        if not isinstance(dw, DWConvBNAct):
            return False
        conv = dw[0]
        k = conv.kernel_size[0]
        return (conv.out_channels == conv.in_channels and conv.kernel_size == (k, k) and k % 2
                and conv.stride[0] == conv.stride[1] and conv.dilation == (1, 1)
                and conv.padding == (same_padding(k),) * 2
                and (expand is None or (isinstance(expand, ConvBNAct)
                                        and expand.kind == "pointwise" and expand.act == dw.act))
                and (se is None or isinstance(se, SqueezeExcite))
                and isinstance(project, nn.Conv2d) and project.kernel_size == (1, 1)
                and project.stride == (1, 1) and project.bias is None and project.groups == 1
                and project.padding == (0, 0) and isinstance(project_bn, nn.BatchNorm2d))

    def forward(self, x):
        if isinstance(x, torch.fx.Proxy):
            return traced_as_leaf(self, x)
        x = feature_layout(x)
        bound = cached(self, self.bound_op)
        if bound is None or bound is RUN_CHILDREN or torch_internals.global_module_hooks():
            # a BN trains, or the stages do not fuse: the stages one by one, as they are
            y = getattr(self, self._layers_name)(x)
            return x + y if self.use_res_connect else y
        return bound(x)

    def stages_fuse(self):
        """Whether the stages are what the fused op computes, with nothing watching them:
        fusable(), every module under the block one of the exact classes the op stands in for
        (plain: no forward of its own, no hooks), and each conv layer's children fusing
        (ConvBNAct.children_fuse)."""
        layers = getattr(self, self._layers_name)
        return (type(layers) is nn.Sequential and self.fusable(layers)
                # the op strides by the block's stride; an edited depthwise conv must run as is
                and self._stages_of(layers)[1][0].stride == (self.stride, self.stride)
                and all(plain(m, type(m)) and type(m) in _STAGE_CLASSES
                        for m in layers.modules())
                and all(stage.children_fuse() for stage in layers
                        if isinstance(stage, ConvBNAct)))

    def bound_op(self):
        """This block as one bound fastdw.ops.inverted_residual (ops.bind), None while a BN
        trains, or RUN_CHILDREN where the stages do not fuse (stages_fuse())."""
        if not self.stages_fuse():
            return RUN_CHILDREN
        expand, dw, se, project, project_bn = self._stages_of(getattr(self, self._layers_name))
        bns = [dw[1], project_bn] if expand is None else [expand[1], dw[1], project_bn]
        if not foldable(*bns):
            return None
        folded = [fold_bn(bn) for bn in bns]
        if expand is None:
            folded = [(None, None), *folded]
        (expand_scale, expand_shift), (dw_scale, dw_shift), (p_scale, p_shift) = folded
        block = BlockWeights(
            expand_w=None if expand is None else matrix(expand[0].weight),
            expand_scale=expand_scale, expand_shift=expand_shift,
            dw_w=dw[0].weight, dw_scale=dw_scale, dw_shift=dw_shift,
            project_w=matrix(project.weight), project_scale=p_scale, project_shift=p_shift,
            se_w1=None if se is None else matrix(se.fc1.weight),
            se_b1=None if se is None else se.fc1.bias,
            se_w2=None if se is None else matrix(se.fc2.weight),
            se_b2=None if se is None else se.fc2.bias)
        in_channels = (dw if expand is None else expand)[0].in_channels
        options = {"stride": self.stride, "act": dw.act, "residual": self.use_res_connect}
        if se is not None:
            options.update(se_act=se.act, se_gate=se.gate)
        return ops.bind("inverted_residual", (block,), options, in_channels)


class InvertedResidual(InvertedResidualBlock):
    """MobileNetV2 block: ReLU6, 3x3 depthwise, hidden = round(in_channels * expand_ratio)."""
    _layers_name = "conv"

    def __init__(self, in_channels, out_channels, stride, expand_ratio, *, eps=1e-5,
                 momentum=0.1):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        bn = dict(eps=eps, momentum=momentum)
        layers = [ConvBNAct(in_channels, hidden, 1, **bn)] if expand_ratio != 1 else []
        layers += [DWConvBNAct(hidden, 3, stride, **bn),
                   nn.Conv2d(hidden, out_channels, 1, bias=False),
                   nn.BatchNorm2d(out_channels, **bn)]
        self._setup(layers, in_channels, out_channels, stride)

    @staticmethod
    def _stages_of(layers):
        if len(layers) not in (3, 4):
            raise ValueError(f"a V2 block has 3 or 4 stages, got {len(layers)}")
        expand = layers[0] if len(layers) == 4 else None
        return expand, layers[-3], None, layers[-2], layers[-1]


class InvertedResidualV3(InvertedResidualBlock):
    """MobileNetV3 block: relu or hardswish, k x k depthwise, optional squeeze-excite whose
    squeeze width is squeeze_channels (torchvision: make_divisible(expanded // 4, 8)), with
    inner activation se_act and gate se_gate (SqueezeExcite's act and gate: MobileNetV3's relu
    and hardsigmoid by default, EfficientNet's silu and sigmoid)."""
    _layers_name = "block"

    def __init__(self, in_channels, kernel_size, expanded_channels, out_channels, stride, *,
                 act="relu", squeeze_channels=None, se_act="relu", se_gate="hardsigmoid",
                 eps=1e-3, momentum=0.01):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        activation(se_act, "se_act")
        activation(se_gate, "se_gate", SE_GATES)
        bn = dict(eps=eps, momentum=momentum)
        layers = ([ConvBNAct(in_channels, expanded_channels, 1, act=act, **bn)]
                  if expanded_channels != in_channels else [])
        layers.append(DWConvBNAct(expanded_channels, kernel_size, stride, act=act, **bn))
        if squeeze_channels is not None:
            layers.append(SqueezeExcite(expanded_channels, squeeze_channels, act=se_act,
                                        gate=se_gate))
        layers.append(ConvBNAct(expanded_channels, out_channels, 1, act="none", **bn))
        self._setup(layers, in_channels, out_channels, stride)

    @staticmethod
    def _stages_of(layers):
        expand = None if isinstance(layers[0], DWConvBNAct) else layers[0]
        se = layers[-2] if isinstance(layers[-2], SqueezeExcite) else None
        project = layers[-1]
        if len(layers) != 2 + (expand is not None) + (se is not None):
            raise ValueError("unexpected stages in a V3 block: "
                             f"{[type(m).__name__ for m in layers]}")
        if not (isinstance(project, ConvBNAct) and project.act == "none"):
            raise ValueError("the last stage of a V3 block must be a ConvBNAct with act='none'")
        return expand, layers[int(expand is not None)], se, project[0], project[1]
