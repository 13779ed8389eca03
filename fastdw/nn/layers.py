"""Conv + BatchNorm + activation layers and squeeze-excite, with torchvision's parameter names.

ConvBNAct is an nn.Sequential whose children are "0" Conv2d, "1" BatchNorm2d and "2" the
activation (absent for act="none"), exactly like torchvision's Conv2dNormActivation, so the two
share state_dict keys. While its BatchNorm trains, the layer runs conv -> the BN module itself ->
activation, so batch statistics and running-stat updates are nn.BatchNorm2d's own. Once the BN
is in eval mode it is folded and the layer is one fused fastdw op, bound once per change of
the layer (fastdw.ops.bind, cached under fastdw.nn.cache's stamp). A layer whose children are not
what the fused op computes, or carry hooks, runs them as they are (children_fuse).

On a CUDA device the fused modules (these, the inverted-residual blocks, convert's FusedChain)
compute channels_last: an NCHW input is converted by the first of them (feature_layout), and
their outputs are channels_last. On the CPU every layout stays as it is.
"""
import torch
import torch.nn.functional as F
from torch import nn

from fastdw import ops, torch_internals
from fastdw.contract import ACTIVATIONS, SE_GATES, same_padding
from fastdw.nn.cache import CachedForward, cached
from fastdw.nn.fold import fold_bn, fold_conv, foldable
from fastdw.ops import checks, dispatch
from fastdw.ops.checks import matrix

# act name -> activation module class; "none" has no module.
ACT_MODULES = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish,
               "hardsigmoid": nn.Hardsigmoid, "silu": nn.SiLU}


# activation module class -> act name
ACT_NAMES = {cls: name for name, cls in ACT_MODULES.items()}


def symmetric_conv(conv: nn.Conv2d) -> bool:
    """Whether a conv is one the fused layers compute exactly (ConvBNAct.wrap does not check):
    square kernel, equal strides, paddings and dilations, zero padding, no bias."""
    pairs = (conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    return (all(isinstance(p, tuple) and len(set(p)) == 1 for p in pairs)
            and conv.padding_mode == "zeros" and conv.bias is None)


def computes_channels_last(x) -> bool:
    """Whether fastdw's modules compute on tensor x in channels_last: on a CUDA device. There the
    cuda backend's 1x1 and block kernels take channels_last only (an NCHW call runs on
    reference), and the Triton 1x1 kernel loads a channels_last A tile as 16-byte vectors on
    every map, an NCHW one only where H*W is a multiple of 16 (scalars on 14x14 and 7x7 maps:
    pwconv_bn_act.py). On the CPU every layout stays as it is."""
    return x.is_cuda


def feature_layout(x):
    """x in the layout fastdw's modules compute in (computes_channels_last): a 4-D CUDA
    feature map as channels_last, anything else as it is. Every fused module (ConvBNAct, the
    inverted-residual blocks, convert's FusedChain) passes its input through it, so in a model
    an NCHW input is converted once, by the first of them (the stem), and every fastdw op after
    it gets channels_last (an op's output keeps its input's layout:
    fastdw.contract.output_memory_format); later calls find it channels_last and copy nothing.
    So on CUDA these modules return channels_last whatever the input's layout."""
    if (isinstance(x, torch.Tensor) and computes_channels_last(x) and x.dim() == 4
            and not x.is_contiguous(memory_format=torch.channels_last)):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def traced_as_leaf(module, x):
    """The call_module node torch.fx.symbolic_trace records for `module` on x (an fx Proxy),
    as it does for torch.nn's own layers. A fused module's forward branches on its state (a BN
    that trains, its fold cache) and checks x, which symbolic values cannot decide, so the
    traced graph calls the module itself."""
    return x.tracer.create_proxy("call_module", x.tracer.path_of_module(module), (x,), {})


def conv_kind(conv):
    """Which fused op computes a conv: "depthwise", "pointwise", or a general conv ("conv": the
    stem, folded into the conv itself)."""
    if conv.groups == conv.in_channels:
        return "depthwise"
    if (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
            and conv.padding == (0, 0)):
        return "pointwise"
    return "conv"


def plain(module, cls):
    """Whether module is exactly a cls, with cls's forward and no hooks: a module a fused op
    may stand in for (its call would run nothing else). Its tensors must be registered
    parameters or buffers too: the fold caches check the bytes of those (fastdw.nn.cache), not
    of a tensor set as a plain attribute (`del bn.running_var; bn.running_var = t`)."""
    return (type(module) is cls and "forward" not in module.__dict__
            and not (module._forward_hooks or module._forward_pre_hooks
                     or module._backward_hooks or module._backward_pre_hooks)
            and not any(isinstance(v, torch.Tensor) for v in module.__dict__.values()))


# What a fused module's cached forward is when its children must run as they are.
RUN_CHILDREN = object()


def act_module(act):
    if act != "none" and act not in ACT_MODULES:
        raise ValueError(f"act must be one of {['none', *ACT_MODULES]}, got {act!r}")
    return [] if act == "none" else [ACT_MODULES[act](inplace=True)]


class ConvBNAct(CachedForward, nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation; padding dilation*(k-1)//2."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, *, groups=1,
                 dilation=1, act="relu6", eps=1e-5, momentum=0.1):
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                         same_padding(kernel_size, dilation), dilation, groups, bias=False)
        super().__init__(conv, nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum),
                         *act_module(act))
        self._describe(act)

    @classmethod
    def wrap(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: str):
        """A layer around existing modules (parameters shared, not copied)."""
        layer = cls.__new__(cls)
        nn.Sequential.__init__(layer, conv, bn, *act_module(act))
        layer._describe(act)
        return layer

    def _describe(self, act):
        conv = self[0]
        self.act = act
        self.out_channels = conv.out_channels
        self.kind = conv_kind(conv)

    def children_fuse(self):
        """Whether the children are what the fused op computes (a bias-free zero-padded conv of
        this layer's kind, a BatchNorm2d, the activation module of its act, none with a forward
        of its own) and nothing watches them (hooks): otherwise the layer runs them as they
        are, so that it computes exactly what they would."""
        if len(self) < 2:
            return False
        conv, bn, *acts = self
        want = [] if self.act == "none" else [ACT_MODULES[self.act]]
        return (plain(conv, nn.Conv2d) and plain(bn, nn.BatchNorm2d)
                and [type(a) for a in acts] == want and all(plain(a, type(a)) for a in acts)
                and all((a.min_val, a.max_val) == (0.0, 6.0) for a in acts
                        if isinstance(a, nn.Hardtanh))
                and conv_kind(conv) == self.kind and conv.bias is None
                and conv.padding_mode == "zeros" and (self.kind == "conv" or symmetric_conv(conv)))

    def _conv(self, x):
        conv = self[0]
        if self.kind == "depthwise":
            return ops.dwconv_bn_act(x, conv.weight, stride=conv.stride[0],
                                     padding=conv.padding[0], dilation=conv.dilation[0],
                                     act="none")
        if self.kind == "pointwise":
            return ops.pwconv_bn_act(x, conv.weight)
        return conv(x)

    def forward(self, x):
        if isinstance(x, torch.fx.Proxy):
            return traced_as_leaf(self, x)
        x = feature_layout(x)
        folded = cached(self, self._folded)
        if folded is RUN_CHILDREN or torch_internals.global_module_hooks():
            return nn.Sequential.forward(self, x)
        if folded is None:  # the BN trains: batch statistics, running-stat updates
            if not self.children_fuse():
                return nn.Sequential.forward(self, x)
            x = self[1](self._conv(x))
            return self[2](x) if len(self) > 2 else x
        if self.kind == "conv":
            conv = self[0]
            y = F.conv2d(x, *folded, conv.stride, conv.padding, conv.dilation, conv.groups)
            # The layer's own in-place activation module, as in training: an out-of-place act
            # allocates a second stem-sized tensor, which glibc maps and page-faults in afresh
            # on every call at batch 8.
            return self[2](y) if len(self) > 2 else y
        return folded(x)

    def _folded(self):
        """What the eval forward needs besides x: the conv's (weight, bias) with the BN folded
        in (kind "conv"), else the layer as one bound op (ops.bind); None while the BN trains;
        RUN_CHILDREN where the children do not fuse (children_fuse())."""
        if not self.children_fuse():
            return RUN_CHILDREN
        conv, bn = self[0], self[1]
        if not foldable(bn):
            return None
        if self.kind == "conv":
            return fold_conv(conv, bn)
        scale, shift = fold_bn(bn)
        if self.kind == "pointwise":
            return ops.bind("pwconv_bn_act", (matrix(conv.weight), scale, shift),
                            {"act": self.act, "residual": None}, conv.in_channels)
        return ops.bind("dwconv_bn_act", (conv.weight, scale, shift),
                        {"stride": conv.stride[0], "padding": conv.padding[0],
                         "dilation": conv.dilation[0], "act": self.act}, conv.in_channels)


class DWConvBNAct(ConvBNAct):
    """Depthwise k x k conv with channel multiplier m (channels -> channels*m) + BN + act."""

    def __init__(self, channels, kernel_size=3, stride=1, *, multiplier=1, dilation=1,
                 act="relu6", eps=1e-5, momentum=0.1):
        super().__init__(channels, channels * multiplier, kernel_size, stride, groups=channels,
                         dilation=dilation, act=act, eps=eps, momentum=momentum)


class SqueezeExcite(nn.Module):
    """x * gate(fc2(act(fc1(avgpool(x))))), fc1/fc2 1x1 convs with bias: torchvision's
    SqueezeExcitation (same state_dict keys). act is an act name of the op contract
    (fastdw.contract.ACTIVATIONS), gate one of fastdw.contract.SE_GATES: relu / hardsigmoid as
    in MobileNetV3 (the defaults), silu / sigmoid as in EfficientNet. Inside a fused block it
    is the op's se_act / se_gate."""

    # Also what a module pickled before these attributes existed computes.
    act, gate = "relu", "hardsigmoid"

    def __init__(self, channels, squeeze_channels, *, act="relu", gate="hardsigmoid"):
        super().__init__()
        self.act, self.gate = act, gate  # checked by __setattr__
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    # torchvision's SqueezeExcitation keeps its act and gate as modules under these names (as
    # fastdw.convert's source models do); set here they would never be read.
    _TORCHVISION_NAMES = {"activation": "act", "scale_activation": "gate"}

    def __setattr__(self, name, value):
        if name in self._TORCHVISION_NAMES:
            raise AttributeError(
                f"fastdw's SqueezeExcite has no {name!r} module: set "
                f"{self._TORCHVISION_NAMES[name]!r} to an act name instead, e.g. se.gate = "
                f"'sigmoid' (one of {sorted(SE_GATES)})")
        if name == "act":
            value = checks.activation(value, "act")
        elif name == "gate":
            value = checks.activation(value, "gate", SE_GATES)
        super().__setattr__(name, value)

    def forward(self, x):
        gate = self.fc2(ACTIVATIONS[self.act](self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * SE_GATES[self.gate](gate)

    def extra_repr(self):
        return f"act={self.act!r}, gate={self.gate!r}"


class Linear(nn.Linear):
    """nn.Linear (same parameters and state_dict keys) whose no_grad forward on a 2-D float32
    CPU input with a bias runs fastdw's C++ GEMM: y = x W^T + b is a 1x1 convolution of x seen
    as (N, C_in, 1, 1), i.e. the cpp backend's pwconv_bn_act with unit scale and the bias as
    shift. The classifiers of fastdw.models use it (torch's addmm is slower on their shapes,
    most at batches above 1). Everything else (autograd, autocast, torch.compile, tracing or a
    mode watching, other devices and dtypes, another backend: dispatch.cpp_direct) is
    nn.Linear's own forward. Tools
    that match the exact type nn.Linear (e.g. torch.ao.quantization.quantize_dynamic with
    {nn.Linear}) need fastdw.nn.Linear named too."""

    def forward(self, x):
        w, b = self.weight, self.bias
        # Only where the result and any error are nn.Linear's (the op checks arguments in its
        # own words, and refuses empty tensors and mixed dtypes that nn.Linear handles).
        # Under a jit trace (which cpp_direct refuses) x is not even read: the tracer names a
        # value after the first variable that reads it, and torch.jit.trace's check, which
        # traces again under no_grad, compares the names.
        if not (not torch.is_grad_enabled() and not torch.jit.is_tracing() and b is not None
                and isinstance(x, torch.Tensor)
                and x.dim() == 2 and x.shape[0] > 0 and x.shape[1] == self.in_features > 0
                and w.is_cpu and b.is_cpu and dispatch.cpp_direct(
                    "pwconv_bn_act", x4 := x[:, :, None, None], (w, b))):
            return super().forward(x)
        # Nothing to fold or check: the weights go to the kernel as they are (its packed copies
        # follow in-place edits), and only the unit scale is kept between calls.
        scale = self.__dict__.get("_unit_scale")
        if scale is None or scale.shape != b.shape:
            # Explicitly so: under torch.device(...) or set_default_dtype, ones() would follow.
            scale = self.__dict__["_unit_scale"] = torch.ones(self.out_features,
                                                              dtype=torch.float32, device="cpu")
        return ops.pwconv_bn_act(x4, w, scale, b, act="none").flatten(1)
