"""fastdw.models against torchvision with random weights: strict state_dict loading both ways,
equal eval outputs, equal train forwards, running statistics and gradients."""
import copy
import re

import pytest
import torch
import torchvision
from torch import nn

import fastdw.models as fm
from fastdw.nn import ConvBNAct
from numerics import REL_TOL, rel_err

MODELS = {
    "mobilenet_v2": (fm.mobilenet_v2, torchvision.models.mobilenet_v2, {}),
    "mobilenet_v2 w0.5 r4": (fm.mobilenet_v2, torchvision.models.mobilenet_v2,
                             dict(width_mult=0.5, round_nearest=4, num_classes=10)),
    "mobilenet_v3_large": (fm.mobilenet_v3_large, torchvision.models.mobilenet_v3_large, {}),
    "mobilenet_v3_large w0.75 reduced": (fm.mobilenet_v3_large,
                                         torchvision.models.mobilenet_v3_large,
                                         dict(width_mult=0.75, reduced_tail=True)),
    "mobilenet_v3_small": (fm.mobilenet_v3_small, torchvision.models.mobilenet_v3_small, {}),
}


# Width/tail variants only change channel counts, which the state_dict test pins down; the
# numeric tests run on the three standard models to keep the suite fast.
STANDARD = ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]


def make_pair(name, randomize_bn):
    """(fastdw model, torchvision model) holding the same random weights and BN statistics."""
    ours_fn, tv_fn, kwargs = MODELS[name]
    torch.manual_seed(0)
    tv = randomize_bn(tv_fn(**kwargs))
    with torch.no_grad():  # logits of O(1), not the init's O(0.01), so errors are visible
        for m in tv.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, m.in_features ** -0.5)
    ours = ours_fn(**kwargs)
    ours.load_state_dict(tv.state_dict(), strict=True)
    return ours, tv


@pytest.mark.parametrize("name", MODELS)
def test_state_dicts_interchangeable(name, randomize_bn):
    ours, tv = make_pair(name, randomize_bn)
    a, b = ours.state_dict(), tv.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    tv.load_state_dict(a, strict=True)
    ours.load_state_dict(b, strict=True)


@pytest.mark.parametrize("name", STANDARD)
def test_eval_outputs_equal(name, randomize_bn, accurate):
    ours, tv = make_pair(name, randomize_bn)
    ours.eval(), tv.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, ref = ours(x), tv(x)
    # float32: BN folding reassociates the math, so fastdw is not bit-equal to torchvision;
    # both sit within float32 rounding of a float64 run of torchvision (conftest.accurate),
    # while any structural slip (padding, activation, residual, SE, BN eps) is off by far more.
    assert accurate(out, tv, x)
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_channels_last_model(randomize_bn, accurate):
    """A channels_last model and input (how the benchmarks run) give torchvision's NCHW result."""
    ours, tv = make_pair("mobilenet_v3_small", randomize_bn)
    ours.eval().to(memory_format=torch.channels_last), tv.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = ours(x.to(memory_format=torch.channels_last))
    assert accurate(out, tv, x)


@pytest.mark.parametrize("name", STANDARD)
def test_train_forward_stats_and_gradients_equal(name, randomize_bn):
    ours, tv = make_pair(name, randomize_bn)
    ours.train(), tv.train()
    x = torch.randn(4, 3, 32, 32)  # 1x1 at the last stage: 4 values per BN channel
    torch.manual_seed(1)  # the same dropout mask for both
    y_ours = ours(x)
    torch.manual_seed(1)
    y_tv = tv(x)
    # In train mode fastdw runs conv (fastdw op, act="none") -> the nn.BatchNorm2d module ->
    # activation: the reference backend runs the same float32 ops in the same order (measured
    # difference 0); a kernel backend may sum in another order, ~1e-7 relative.
    assert rel_err(y_ours, y_tv) < REL_TOL[torch.float32]
    tv_buffers = dict(tv.named_buffers())
    for key, buf in ours.named_buffers():
        torch.testing.assert_close(buf, tv_buffers[key], rtol=1e-5, atol=1e-6, msg=key)
    g = torch.randn_like(y_tv)
    (y_ours * g).sum().backward()
    (y_tv * g).sum().backward()
    tv_grads = {key: p.grad for key, p in tv.named_parameters()}
    total = torch.cat([t.flatten() for t in tv_grads.values()]).norm()
    for key, p in ours.named_parameters():
        # Backward through ~50 batch-statistics BNs amplifies summation-order noise (up to
        # ~5e-5 relative measured with the C++ backend; 0 with reference), hence 1e-4. Some
        # true gradients are exactly 0 (a BN bias feeding, through a 1x1 conv, a train-mode BN
        # that removes any per-channel shift): those hold only rounding noise, ~1e-9 of the
        # total gradient norm, so the floor is float32 epsilon (~1e-7) times that norm.
        err = (p.grad - tv_grads[key]).norm()
        assert err <= 1e-4 * tv_grads[key].norm() + 1e-7 * total, (key, err.item())


@pytest.mark.parametrize("width_mult, depth_multiplier", [(1.0, 1), (0.5, 2)])
def test_mobilenet_v1_architecture(width_mult, depth_multiplier):
    model = fm.mobilenet_v1(width_mult=width_mult, depth_multiplier=depth_multiplier,
                            num_classes=10)
    stem, *blocks = model.features
    assert (stem[0].in_channels, stem[0].kernel_size, stem[0].stride) == (3, (3, 3), (2, 2))
    assert stem[0].out_channels == int(32 * width_mult)
    assert [b[0][0].stride[0] for b in blocks] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert [b[1][0].out_channels for b in blocks] == [
        int(c * width_mult) for c in (64, 128, 128, 256, 256, *[512] * 6, 1024, 1024)]
    for b in blocks:
        dw = b[0][0]
        assert dw.groups == dw.in_channels and dw.out_channels == dw.in_channels * depth_multiplier
        assert isinstance(b[0][2], nn.ReLU6) and isinstance(b[1][2], nn.ReLU6)
    assert isinstance(model.classifier[0], nn.Dropout) and model.classifier[0].p == 0.001
    if (width_mult, depth_multiplier) == (1.0, 1):
        # The paper's Table 1 model with a 10-class head: 4.2M - 1000*1025 + 10*1025 params.
        assert sum(p.numel() for p in model.parameters()) == 4_231_976 - 990 * 1025


def test_mobilenet_v1_eval_equals_stock_composition(randomize_bn, float32_bound):
    """V1 has no torchvision twin: compare the fused eval model with its own layers run as
    plain Conv2d -> BatchNorm2d -> ReLU6 modules."""
    model = randomize_bn(fm.mobilenet_v1(width_mult=0.5, depth_multiplier=2)).eval()
    x = torch.randn(2, 3, 64, 64)

    def stock(x, model=model):
        for layer in model.features.modules():
            if isinstance(layer, ConvBNAct):
                x = nn.Sequential.forward(layer, x)
        return model.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
    with torch.no_grad():
        ref64 = stock(x.double(), copy.deepcopy(model).double())
        assert rel_err(model(x), ref64) < float32_bound(stock(x), ref64)
    model.train()  # batch statistics; the same dropout mask for both
    torch.manual_seed(0)
    y = model(x)
    torch.manual_seed(0)
    assert rel_err(y, stock(x)) < REL_TOL[torch.float32]


@pytest.mark.parametrize("builder", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large",
                                     "mobilenet_v3_small"])
@pytest.mark.parametrize("kwargs,error,text", [
    (dict(width_mult=0), ValueError, "width_mult must be > 0"),
    (dict(width_mult=-1.0), ValueError, "width_mult must be > 0"),
    (dict(width_mult="1"), TypeError, "width_mult must be a number"),
    (dict(num_classes=0), ValueError, "num_classes must be >= 1"),
    (dict(num_classes="10"), TypeError, "num_classes must be an int"),
    (dict(dropout=1.5), ValueError, "dropout must be in [0, 1]"),
])
def test_builders_reject_bad_hyperparameters(builder, kwargs, error, text):
    with pytest.raises(error, match=re.escape(text)):
        getattr(fm, builder)(**kwargs)


@pytest.mark.parametrize("builder,kwargs,text", [
    ("mobilenet_v1", dict(depth_multiplier=0), "depth_multiplier must be >= 1"),
    ("mobilenet_v2", dict(round_nearest=0), "round_nearest must be >= 1"),
])
def test_builders_reject_bad_counts(builder, kwargs, text):
    with pytest.raises(ValueError, match=text):
        getattr(fm, builder)(**kwargs)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small"])
def test_a_nan_pixel_reaches_every_logit_as_in_torchvision(name, randomize_bn):
    # No kernel of the module path or the eval program clamps a NaN away (per-op cases:
    # tests/ops/test_nonfinite.py).
    ours, tv = (m.eval() for m in make_pair(name, randomize_bn))
    x = torch.randn(1, 3, 32, 32)
    x[0, 1, 5, 7] = float("nan")
    with torch.no_grad():
        expected = tv(x)
        outs = [ours(x) for _ in range(3)]  # the module path, then the eval program
    assert expected.isnan().all()
    assert all(out.isnan().all() for out in outs)
