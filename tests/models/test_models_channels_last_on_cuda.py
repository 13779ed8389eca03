"""On a CUDA device fastdw's models, and models made by fastdw.convert, compute their feature
maps channels_last (fastdw.nn.layers.feature_layout): the first fused module converts an NCHW
input once, and every fastdw op after it receives channels_last, the layout the cuda backend's
1x1 and block kernels take and the Triton 1x1 kernel reads as contiguous vectors.

No GPU here: the check that decides (fastdw.nn.layers.computes_channels_last, x.is_cuda) is
replaced so that CPU tensors count as CUDA ones, and every op's input is recorded where every
route ends (fastdw.ops.dispatch.run_kernel), on the reference backend (stock ops, any layout).
Without the replacement, on the CPU, the same models hand their ops NCHW, as before.
"""
import copy

import pytest
import torch
import torchvision
from torch import nn

import fastdw
import fastdw.models
from numerics import assert_close
from fastdw.nn import layers
from fastdw.nn.convert_fused import FusedChain
from fastdw.ops import dispatch


def channels_last(x):
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def nchw(x):  # (a map of 1x1 pixels is both)
    return x.dim() == 4 and x.is_contiguous()


@pytest.fixture
def op_inputs(monkeypatch):
    """(op name, its x) of every kernel call."""
    seen = []
    run_kernel = dispatch.run_kernel

    def recording(backend, name, *args):
        seen.append((name, args[0]))
        return run_kernel(backend, name, *args)

    monkeypatch.setattr(dispatch, "run_kernel", recording)
    return seen


def flat_chain():
    """conv -> BN -> act layers in one flat Sequential: convert makes it a FusedChain."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
                         nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16),
                         nn.ReLU6(), nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24))


MODELS = {  # narrow, with 10 classes: the layouts are what is checked, cheaply
    "v2": lambda: fastdw.models.mobilenet_v2(width_mult=0.35, num_classes=10),
    "v3_small": lambda: fastdw.models.mobilenet_v3_small(width_mult=0.5, num_classes=10),
    "converted_v3_small": lambda: fastdw.convert(
        torchvision.models.mobilenet_v3_small(width_mult=0.5, num_classes=10)),
    "converted_chain": lambda: fastdw.convert(flat_chain()),
}


def run(model, x, train):
    """model(x); in training on a copy of model (a training forward updates the BatchNorms)
    with the same dropout masks on every run."""
    if train:
        model = copy.deepcopy(model).train()
        torch.manual_seed(1)
    with fastdw.use_backend("reference"), torch.set_grad_enabled(train):
        return model(x)


# (model, training): V2's blocks in eval (one inverted_residual op each); V3 in training (the
# layers' dw and pw ops beside the BNs' own modules, squeeze-excite, the models' stem); a
# converted torchvision model (fastdw's modules) and a FusedChain in eval. (A FusedChain in
# training runs its original children: stock modules, no fastdw op.)
CASES = [("v2", False), ("v3_small", True), ("converted_v3_small", False),
         ("converted_chain", False)]


@pytest.mark.parametrize("name,train", CASES,
                         ids=[f"{n}-{'train' if t else 'eval'}" for n, t in CASES])
def test_every_op_gets_channels_last_on_cuda(name, train, op_inputs, randomize_bn, monkeypatch):
    model = MODELS[name]().eval()
    randomize_bn(model)
    if name == "converted_chain":
        assert isinstance(model, FusedChain)
    x = torch.randn(2, 3, 32, 32)

    on_cpu = run(model, x, train)
    assert op_inputs and all(nchw(x) for _, x in op_inputs)  # on the CPU: NCHW, as before
    op_inputs.clear()

    entries = []
    monkeypatch.setattr(layers, "computes_channels_last",
                        lambda t: entries.append(channels_last(t)) or True)
    on_cuda = run(model, x, train)
    wrong = [(op, x.stride()) for op, x in op_inputs if not channels_last(x)]
    assert op_inputs and not wrong, wrong
    # one conversion: the first fused module gets NCHW, every later one channels_last
    assert entries[0] is False and all(entries[1:])
    if not train:  # (training BNs over 2 pixels of 1x1 maps amplify the order of additions)
        assert_close(on_cuda, on_cpu, torch.float32)  # the same stock ops, in another layout


def test_feature_layout_leaves_what_needs_no_copy(monkeypatch):
    monkeypatch.setattr(layers, "computes_channels_last", lambda t: True)
    nchw = torch.randn(2, 8, 5, 5)
    converted = layers.feature_layout(nchw)
    assert channels_last(converted) and torch.equal(converted, nchw)
    assert layers.feature_layout(converted) is converted  # already channels_last: no copy
    flat = torch.randn(2, 8)
    assert layers.feature_layout(flat) is flat            # not a feature map
    monkeypatch.undo()
    assert layers.feature_layout(nchw) is nchw            # the CPU: as it is
