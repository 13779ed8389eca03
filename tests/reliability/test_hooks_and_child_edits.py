"""A fused module computes exactly what its children would, or runs them: after a child is
replaced or edited into something the fused op does not compute, or a hook is put on one, the
module's output is that of its children run one by one (stock PyTorch in float64 as the
reference), in eval mode (cached fold) and in training, and the hooks run."""
import copy

import pytest
import torch
from torch import nn

import fastdw
from fastdw import backend
from numerics import assert_close


def stock(module):
    """The module's children as a plain nn.Sequential in float64: what they compute."""
    return nn.Sequential(*copy.deepcopy(list(module))).double()


class DoubledConv(nn.Conv2d):
    def forward(self, x):
        return 2 * super().forward(x)


def _act_removed(layer):
    layer[2] = nn.Identity()


def _act_replaced(layer):
    layer[2] = nn.GELU()


def _relu6_range_changed(layer):
    layer[2].max_val = 2.0


def _conv_bias_added(layer):
    layer[0].bias = nn.Parameter(torch.randn(layer[0].out_channels))


def _reflect_padding(layer):
    layer[0].padding_mode = "reflect"


def _stride_changed(layer):
    layer[0].stride = (2, 2)


def _conv_subclass(layer):
    conv = layer[0]
    doubled = DoubledConv(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, conv.dilation, conv.groups, bias=False)
    doubled.weight = conv.weight
    layer[0] = doubled


EDITS = [_act_removed, _act_replaced, _relu6_range_changed, _conv_bias_added, _reflect_padding,
         _stride_changed, _conv_subclass]

LAYERS = {
    "pointwise": lambda: fastdw.nn.ConvBNAct(16, 24, 1, act="relu6"),
    "depthwise": lambda: fastdw.nn.DWConvBNAct(16, act="relu6"),
    "stem": lambda: fastdw.nn.ConvBNAct(16, 8, 3, stride=2, act="relu6"),
}


@pytest.mark.parametrize("edit", EDITS, ids=lambda e: e.__name__.lstrip("_"))
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_edited_children_are_computed(layer, edit, mode, backend_name, randomize_bn):
    module = randomize_bn(LAYERS[layer]()).eval()
    x = torch.randn(2, 16, 10, 10)
    with backend.use_backend(backend_name), torch.no_grad():
        module(x)
        module(x)  # the fold is cached
        edit(module)
        getattr(module, mode)()
        out = module(x)
    assert_close(out, getattr(stock(module), mode)()(x.double()), torch.float32)


def test_the_converted_layer_of_the_issue(backend_name):
    from torchvision.ops.misc import Conv2dNormActivation
    tv = nn.Sequential(Conv2dNormActivation(8, 16, 1)).eval()
    fd = fastdw.nn.convert(copy.deepcopy(tv))
    x = torch.randn(2, 8, 6, 6)
    with backend.use_backend(backend_name), torch.no_grad():
        fd(x)
        for model in (tv, fd):
            model[0][2] = nn.Identity()
        assert_close(fd(x), copy.deepcopy(tv).double()(x.double()), torch.float32)


BLOCKS = {
    "v2": lambda: fastdw.nn.InvertedResidual(16, 16, 1, 6),
    "v3": lambda: fastdw.nn.InvertedResidualV3(16, 3, 48, 16, 1, act="hardswish",
                                               squeeze_channels=16),
}


def inner(block):
    """(the block's stages, its depthwise layer's BatchNorm)"""
    layers = block.conv if hasattr(block, "conv") else block.block
    dw = next(m for m in layers if isinstance(m, fastdw.nn.DWConvBNAct))
    return layers, dw[1]


@pytest.mark.parametrize("block", BLOCKS)
def test_hooks_on_inner_modules_run(block, backend_name, randomize_bn):
    module = randomize_bn(BLOCKS[block]()).eval()
    x = torch.randn(2, 16, 9, 9)
    layers, bn = inner(module)
    seen = []
    with backend.use_backend(backend_name), torch.no_grad():
        module(x)
        module(x)  # the bound op is cached
        bn.register_forward_hook(lambda m, args, out: seen.append(out.shape) or -out)
        out = module(x)
    assert seen == [(2, bn.num_features, 9, 9)]
    with torch.no_grad():
        ref = x.double() + stock(layers)(x.double())  # the copy keeps the hook
    assert_close(out, ref, torch.float32)


@pytest.mark.parametrize("block", BLOCKS)
def test_edited_stages_of_a_block_are_computed(block, backend_name, randomize_bn):
    module = randomize_bn(BLOCKS[block]()).eval()
    x = torch.randn(2, 16, 9, 9)
    layers, _ = inner(module)
    with backend.use_backend(backend_name), torch.no_grad():
        module(x)
        module(x)
        dw = next(m for m in layers if isinstance(m, fastdw.nn.DWConvBNAct))
        dw[2] = nn.Identity()
        out = module(x)
    assert_close(out, x.double() + stock(layers)(x.double()), torch.float32)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_blocks_depthwise_stride_edited(mode, backend_name, randomize_bn):
    """The op strides by the block's stride; a depthwise conv given another one runs as is."""
    module = randomize_bn(fastdw.nn.InvertedResidual(16, 24, 2, 6))
    module.train(mode == "train")
    x = torch.randn(2, 16, 9, 9)
    layers, _ = inner(module)
    with backend.use_backend(backend_name), torch.no_grad():
        module(x)
        module(x)
        next(m for m in layers if isinstance(m, fastdw.nn.DWConvBNAct))[0].stride = (1, 1)
        out = module(x)
    assert out.shape == (2, 24, 9, 9)
    assert_close(out, stock(layers).train(mode == "train")(x.double()), torch.float32)


def test_a_hook_added_after_the_models_program_was_built(randomize_bn, accurate):
    model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for _ in range(3):
            model(x)
        _, bn = inner(model.features[3])
        seen = []
        bn.register_forward_hook(lambda m, args, out: seen.append(1))
        out = model(x)
    assert seen == [1]
    assert accurate(out, model, x)
