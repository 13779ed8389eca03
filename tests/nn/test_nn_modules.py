"""fastdw.nn modules: fused eval forwards against the stock composition of their own children,
train-mode behaviour, fold invalidation, one op per block, torch.compile."""
import functools

import pytest
import torch
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation, SqueezeExcitation

import fastdw.nn.fold
import fastdw.ops
from fastdw.nn import ConvBNAct, DWConvBNAct, InvertedResidual, InvertedResidualV3, SqueezeExcite
from numerics import REL_TOL, rel_err


def stock(module, x):
    """The module's children run one after another with stock PyTorch (BN in its own mode)."""
    if isinstance(module, SqueezeExcite):
        return nn.Module.__call__(module, x)
    if isinstance(module, (InvertedResidual, InvertedResidualV3)):
        y = stock(module.conv if isinstance(module, InvertedResidual) else module.block, x)
        return x + y if module.use_res_connect else y
    if isinstance(module, nn.Sequential):
        for child in module:
            x = stock(child, x)
        return x
    return module(x)


LAYERS = {
    "stem 3x3 s2": lambda: ConvBNAct(3, 16, 3, 2, act="hardswish"),
    "pointwise": lambda: ConvBNAct(16, 24, 1, act="relu6"),
    "pointwise linear": lambda: ConvBNAct(16, 24, 1, act="none"),
    "depthwise 3x3": lambda: DWConvBNAct(24, 3, 1, act="relu"),
    "depthwise 5x5 s2": lambda: DWConvBNAct(24, 5, 2, act="hardswish"),
    "depthwise multiplier 2": lambda: DWConvBNAct(12, 3, 2, multiplier=2),
    "depthwise dilation 2": lambda: DWConvBNAct(12, 3, 1, dilation=2, act="silu"),
}
BLOCKS = {
    "v2 expand": lambda: InvertedResidual(16, 16, 1, 6),
    "v2 no expand": lambda: InvertedResidual(16, 24, 1, 1),
    "v2 stride 2": lambda: InvertedResidual(16, 24, 2, 6),
    "v3 se hardswish k5": lambda: InvertedResidualV3(24, 5, 72, 24, 1, act="hardswish",
                                                     squeeze_channels=24),
    "v3 no expand se s2": lambda: InvertedResidualV3(16, 3, 16, 16, 2, squeeze_channels=8),
    "v3 no se": lambda: InvertedResidualV3(24, 3, 88, 24, 1),
    # EfficientNet's MBConv: SiLU throughout, squeeze-excite with a SiLU and a sigmoid gate
    "mbconv se silu sigmoid": lambda: InvertedResidualV3(24, 3, 72, 24, 1, act="silu",
                                                         squeeze_channels=6, se_act="silu",
                                                         se_gate="sigmoid"),
}


def in_channels(module):
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d)).in_channels


def last_bn(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)][-1]


@pytest.mark.parametrize("name", [*LAYERS, *BLOCKS])
def test_eval_fused_equals_stock(name, randomize_bn):
    module = randomize_bn({**LAYERS, **BLOCKS}[name]()).eval()
    x = torch.randn(2, in_channels(module), 15, 13)  # odd sizes: stride-2 edges
    with torch.no_grad():
        fused, ref = module(x), stock(module, x)
        ref64 = stock(module.double(), x.double())
    assert fused.shape == ref.shape
    # Folding BN reassociates the float32 math; both sides stay ~1e-7 from the float64 truth.
    assert rel_err(fused, ref64) < REL_TOL[torch.float32]
    assert rel_err(ref, ref64) < REL_TOL[torch.float32]


@pytest.mark.parametrize("name", BLOCKS)
def test_eval_block_is_one_fused_op(name, randomize_bn):
    # Grad mode with parameters that require grad: the op runs as its custom op, which the
    # profiler records (a forward op, and no backward op until backward).
    block = randomize_bn(BLOCKS[name]()).eval()
    x = torch.randn(1, in_channels(block), 8, 8)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        block(x)
    calls = [e.name for e in prof.events() if e.name.startswith("fastdw::")]
    assert calls == ["fastdw::inverted_residual"]


@pytest.mark.parametrize("name, op", [("depthwise 5x5 s2", "dwconv_bn_act"),
                                      ("pointwise", "pwconv_bn_act")])
def test_eval_layer_is_one_fused_op(name, op, randomize_bn):
    layer = randomize_bn(LAYERS[name]()).eval()
    x = torch.randn(1, in_channels(layer), 8, 8)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        layer(x)
    calls = [e.name for e in prof.events() if e.name.startswith("fastdw::")]
    assert calls == [f"fastdw::{op}"]


@pytest.mark.parametrize("act", ["relu6", "hardswish", "none"])
@pytest.mark.parametrize("groups", [1, 16])
def test_conv_bn_act_matches_torchvision_layer(act, groups, randomize_bn):
    """Same state_dict keys as Conv2dNormActivation; train forward, running stats and
    gradients identical to it; eval outputs equal."""
    activation = {"relu6": nn.ReLU6, "hardswish": nn.Hardswish, "none": None}[act]
    tv = randomize_bn(Conv2dNormActivation(16, 32, 3, 2, groups=groups,
                                           activation_layer=activation))
    ours = ConvBNAct(16, 32, 3, 2, groups=groups, act=act)
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(4, 16, 9, 9)
    y_ours, y_tv = ours(x), tv(x)  # train mode: batch statistics
    # The reference backend runs the very same stock ops; other backends' fp32 kernels may sum
    # in another order (~1e-7 relative), far inside these bounds.
    assert rel_err(y_ours, y_tv) < REL_TOL[torch.float32]
    for name, buf in tv.named_buffers():
        torch.testing.assert_close(ours.get_buffer(name), buf, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y_tv)
    (y_ours * g).sum().backward()
    (y_tv * g).sum().backward()
    for name, p in tv.named_parameters():
        assert rel_err(ours.get_parameter(name).grad, p.grad) < 1e-4, name
    ours.eval(), tv.eval()
    with torch.no_grad():
        assert rel_err(ours(x), tv(x)) < REL_TOL[torch.float32]


# SqueezeExcite's (act, gate) -> torchvision SqueezeExcitation's (activation, scale_activation)
SE_KINDS = {("relu", "hardsigmoid"): (nn.ReLU, nn.Hardsigmoid),
            ("silu", "sigmoid"): (nn.SiLU, nn.Sigmoid),
            ("silu", "hardsigmoid"): (nn.SiLU, nn.Hardsigmoid)}


@pytest.mark.parametrize("kind", SE_KINDS, ids="-".join)
def test_squeeze_excite_matches_torchvision(kind):
    activation, scale_activation = SE_KINDS[kind]
    tv = SqueezeExcitation(32, 8, activation=activation, scale_activation=scale_activation)
    ours = SqueezeExcite(32, 8) if kind == ("relu", "hardsigmoid") else \
        SqueezeExcite(32, 8, act=kind[0], gate=kind[1])
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 32, 7, 7)
    y_ours, y_tv = ours(x), tv(x)
    assert rel_err(y_ours, y_tv) < 1e-6
    g = torch.randn_like(y_tv)
    (y_ours * g).sum().backward()
    (y_tv * g).sum().backward()
    for name, p in tv.named_parameters():
        assert rel_err(ours.get_parameter(name).grad, p.grad) < 1e-5, name


def test_squeeze_excite_refuses_torchvisions_module_names_and_unknown_acts():
    """A converted model's SE is this class: setting torchvision's act modules on it, or an act
    name the op contract lacks, raises instead of being stored and never read."""
    se = SqueezeExcite(16, 8)
    with pytest.raises(AttributeError, match="no 'scale_activation'.*'gate'"):
        se.scale_activation = nn.Sigmoid()
    with pytest.raises(AttributeError, match="no 'activation'.*'act'"):
        se.activation = nn.SiLU()
    with pytest.raises(ValueError, match="gate must be one of"):
        se.gate = nn.Sigmoid()
    with pytest.raises(ValueError, match="act must be one of"):
        se.act = "gelu"
    se.act, se.gate = "silu", "sigmoid"
    tv = SqueezeExcitation(16, 8, activation=nn.SiLU, scale_activation=nn.Sigmoid)
    tv.load_state_dict(se.state_dict())
    x = torch.randn(2, 16, 5, 5)
    assert rel_err(se(x), tv(x)) < 1e-6


def test_efficientnet_block_matches_torchvision_modules(randomize_bn):
    """An MBConv block (SiLU, squeeze-excite with SiLU and sigmoid) against the same block of
    torchvision's modules (Conv2dNormActivation, SqueezeExcitation) with its weights: outputs
    in eval (the fused op), gradients in eval (the fused op's backward) and in training (batch
    statistics, running-stat updates)."""
    bn = functools.partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)
    layer = functools.partial(Conv2dNormActivation, norm_layer=bn, activation_layer=nn.SiLU)
    tv = randomize_bn(nn.Sequential(
        layer(16, 64, 1), layer(64, 64, 5, 2, groups=64),
        SqueezeExcitation(64, 4, activation=nn.SiLU, scale_activation=nn.Sigmoid),
        layer(64, 24, 1, activation_layer=None)))
    ours = InvertedResidualV3(16, 5, 64, 24, 2, act="silu", squeeze_channels=4, se_act="silu",
                              se_gate="sigmoid")
    ours.block.load_state_dict(tv.state_dict())
    x = torch.randn(2, 16, 13, 11)
    for mode in ("eval", "train"):
        ours.train(mode == "train")
        tv.train(mode == "train")
        if mode == "eval":
            with torch.no_grad():
                assert rel_err(ours(x), tv(x)) < REL_TOL[torch.float32]
        y_ours, y_tv = ours(x), tv(x)
        assert rel_err(y_ours, y_tv) < REL_TOL[torch.float32], mode
        g = torch.randn_like(y_tv)
        for p in (*ours.parameters(), *tv.parameters()):
            p.grad = None
        (y_ours * g).sum().backward()
        (y_tv * g).sum().backward()
        for name, p in tv.named_parameters():
            assert rel_err(ours.block.get_parameter(name).grad, p.grad) < 1e-4, (mode, name)
    for name, buf in tv.named_buffers():
        torch.testing.assert_close(ours.block.get_buffer(name), buf, rtol=1e-5, atol=1e-6)


def test_bad_squeeze_excite_act_and_gate():
    with pytest.raises(ValueError, match="act must be one of"):
        SqueezeExcite(16, 4, act="gelu")
    with pytest.raises(ValueError, match=r"gate must be one of \['hardsigmoid', 'sigmoid'\]"):
        SqueezeExcite(16, 4, gate="relu")
    with pytest.raises(ValueError, match="se_act must be one of"):
        InvertedResidualV3(16, 3, 64, 16, 1, squeeze_channels=16, se_act="tanh")
    with pytest.raises(ValueError, match="se_gate must be one of"):
        InvertedResidualV3(16, 3, 64, 16, 1, squeeze_channels=16, se_gate="hardswish")


@pytest.mark.parametrize("name", ["depthwise 3x3", "stem 3x3 s2", "v3 se hardswish k5"])
def test_fold_follows_in_place_bn_changes(name, randomize_bn, monkeypatch):
    """Under no_grad the fold is cached; an in-place change of a BN tensor must refold."""
    module = randomize_bn({**LAYERS, **BLOCKS}[name]()).eval()
    folds = []
    real = fastdw.nn.fold.fold_tensors
    monkeypatch.setattr(fastdw.nn.fold, "fold_tensors",
                        lambda *tensors: folds.append(tensors) or real(*tensors))
    x = torch.randn(1, in_channels(module), 10, 10)
    with torch.no_grad():
        before = module(x)
        n_folds = len(folds)
        assert n_folds > 0
        torch.testing.assert_close(module(x), before, rtol=0, atol=0)
        assert len(folds) == n_folds, "an unchanged model must reuse the cached fold"
        bn = last_bn(module)
        bn.running_var.mul_(4.0)
        after = module(x)
        assert len(folds) > n_folds
        assert rel_err(after, before) > 1e-3
        assert rel_err(after, stock(module, x)) < REL_TOL[torch.float32]
        bn.weight.copy_(torch.zeros_like(bn.weight))  # optimizer-style in-place write
        assert rel_err(module(x), stock(module, x)) < REL_TOL[torch.float32]


def test_fold_follows_dtype_change(randomize_bn):
    module = randomize_bn(BLOCKS["v2 expand"]()).eval()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        module(x)
        module.double()  # swaps .data in place: same Parameter objects, new storage
        out = module(x.double())
    assert out.dtype == torch.float64
    assert rel_err(out, stock(module, x.double())) < REL_TOL[torch.float64]


def test_eval_gradients_flow_through_the_fold(randomize_bn):
    """With autograd on, eval-mode (frozen-statistics) fine-tuning gets BN weight gradients."""
    fused = randomize_bn(BLOCKS["v3 se hardswish k5"]()).eval()
    ref = randomize_bn(BLOCKS["v3 se hardswish k5"]()).eval()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(2, 24, 9, 9)
    fused(x).square().sum().backward()
    stock(ref, x).square().sum().backward()
    for name, p in ref.named_parameters():
        assert rel_err(fused.get_parameter(name).grad, p.grad) < 1e-4, name


def test_train_mode_uses_batch_statistics(randomize_bn):
    block = randomize_bn(BLOCKS["v2 expand"]())
    ref = randomize_bn(BLOCKS["v2 expand"]())
    ref.load_state_dict(block.state_dict())
    x = torch.randn(4, 16, 8, 8) * 3 + 1
    assert rel_err(block(x), stock(ref, x)) < REL_TOL[torch.float32]
    for name, buf in ref.named_buffers():
        torch.testing.assert_close(block.get_buffer(name), buf, rtol=1e-5, atol=1e-6)
    assert block.conv[0][1].num_batches_tracked.item() == 1


@pytest.mark.parametrize("name", ["v2 stride 2", "v3 se hardswish k5"])
def test_compile_fullgraph_block(name, randomize_bn):
    block = randomize_bn(BLOCKS[name]()).eval()
    x = torch.randn(2, in_channels(block), 12, 12)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)  # fullgraph: any graph break raises
    with torch.no_grad():
        eager = block(x)
        assert rel_err(compiled(x), eager) < REL_TOL[torch.float32]
        last_bn(block).running_var.mul_(2)  # the compiled graph folds on every call
        changed = block(x)
        assert rel_err(changed, eager) > 1e-3
        assert rel_err(compiled(x), changed) < REL_TOL[torch.float32]


def test_bad_act_and_stride():
    with pytest.raises(ValueError, match="act"):
        ConvBNAct(3, 8, act="gelu")
    with pytest.raises(ValueError, match="stride"):
        InvertedResidual(8, 8, 3, 6)
