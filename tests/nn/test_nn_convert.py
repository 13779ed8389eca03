"""fastdw.nn.convert on torchvision models: same state_dict, same outputs, fused modules."""
import copy

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import mobilenetv2, mobilenetv3

import fastdw.nn as fnn


def count(model, cls):
    return sum(type(m) is cls for m in model.modules())


@pytest.mark.parametrize("builder, kwargs, blocks", [
    (torchvision.models.mobilenet_v2, {}, (mobilenetv2.InvertedResidual, fnn.InvertedResidual)),
    (torchvision.models.mobilenet_v3_small, {},
     (mobilenetv3.InvertedResidual, fnn.InvertedResidualV3)),
])
def test_convert_torchvision_model(builder, kwargs, blocks, randomize_bn, accurate):
    tv = randomize_bn(builder(**kwargs)).eval()
    n_blocks = count(tv, blocks[0])
    model = fnn.convert(copy.deepcopy(tv))
    assert count(model, blocks[0]) == 0 and count(model, blocks[1]) == n_blocks
    assert type(model.features[0]) is fnn.ConvBNAct and type(model.features[-1]) is fnn.ConvBNAct
    assert model.state_dict().keys() == tv.state_dict().keys()
    for (name, a), b in zip(model.state_dict().items(), tv.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert accurate(model(x), tv, x)
    tv.load_state_dict(model.state_dict(), strict=True)


def test_convert_keeps_modules_and_train_mode():
    tv = torchvision.models.mobilenet_v2().train()
    dw_conv = tv.features[2].conv[1][0]
    model = fnn.convert(tv)
    assert model is tv
    assert model.features[2].conv[1][0] is dw_conv  # parameters shared, not copied
    assert all(m.training for m in model.modules())


def test_convert_leaves_dilated_v3_blocks_but_converts_their_layers(randomize_bn, accurate):
    """Dilated depthwise convs are outside the fused block op: those blocks stay torchvision's,
    their layers still become fastdw layers, and the function is unchanged."""
    tv = randomize_bn(torchvision.models.mobilenet_v3_small(dilated=True)).eval()
    model = fnn.convert(copy.deepcopy(tv))
    kept = [m for m in model.modules() if type(m) is mobilenetv3.InvertedResidual]
    assert len(kept) == 3
    assert all(isinstance(m.block[1], fnn.DWConvBNAct) for m in kept)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert accurate(model(x), tv, x)


def test_convert_keeps_what_it_cannot_compute(randomize_bn, accurate):
    """A GELU-gated squeeze-excite and a conv with a bias stay as they are; a conv + BN with a
    GELU after it fuses the conv + BN and keeps the GELU module."""
    se = torchvision.ops.SqueezeExcitation(8, 4, activation=nn.GELU)
    gelu = torchvision.ops.Conv2dNormActivation(8, 8, activation_layer=nn.GELU, inplace=None)
    biased = torchvision.ops.Conv2dNormActivation(8, 8, bias=True)
    tv = randomize_bn(nn.Sequential(se, gelu, biased)).eval()
    reference = copy.deepcopy(tv)
    model = fnn.convert(tv)
    assert model[0] is se and model[2] is biased
    assert model[1] is not gelu and model[1][2] is gelu[2] and model[1][0] is gelu[0]
    assert model.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        assert accurate(model(x), reference, x)
