"""fastdw.convert on whole torchvision and timm models: the same outputs in eval (against float64
stock PyTorch) on the reference and cpp backends with every depthwise conv run by a fastdw op,
the same gradients in training (stochastic depth included), a state_dict that loads into the
original class, and the original left untouched."""
import copy

import pytest
import torch
import torchvision

import fastdw
import numerics
from fastdw import backend
from fastdw.nn.convert_fused import FusedChain
from fastdw.torch_internals import TorchDispatchMode

# (builder, kwargs, names convert() leaves, and why): the timm models' stem and head convs are
# called by the model's own forward, which convert() never replaces; mobilenetv3's head conv
# has a bias and no BN.
TORCHVISION = {
    "mobilenet_v2": (torchvision.models.mobilenet_v2, {}, set()),
    "mobilenet_v3_large": (torchvision.models.mobilenet_v3_large, {}, set()),
    "mobilenet_v3_small": (torchvision.models.mobilenet_v3_small, {}, set()),
    "efficientnet_b0": (torchvision.models.efficientnet_b0, {}, set()),
    "mnasnet1_0": (torchvision.models.mnasnet1_0, {}, set()),
}
TIMM = {
    "mobilenetv3_large_100": {"conv_stem", "conv_head"},
    "efficientnet_b0": {"conv_stem", "conv_head"},
    "mobilenetv4_conv_small": {"conv_stem", "conv_head"},
}
MODELS = [*(f"torchvision.{n}" for n in TORCHVISION), *(f"timm.{n}" for n in TIMM)]


def build(name, **timm_kwargs):
    """(model with random weights, the names convert() leaves)."""
    library, model = name.split(".")
    if library == "timm":
        timm = pytest.importorskip("timm", reason="needs timm (pip install timm), the library "
                                                  "of these models")
        return timm.create_model(model, pretrained=False, **timm_kwargs), TIMM[model]
    builder, kwargs, left = TORCHVISION[model]
    return builder(weights=None, **kwargs), left


def backends():
    return [b for b in ("reference", "cpp") if b in backend.usable("cpu")]


class CountConvs(TorchDispatchMode):
    """Counts the fastdw ops and the stock depthwise convolutions a forward dispatches (with a
    mode active, fastdw's calls go through its custom ops, so they show up here)."""

    def __init__(self):
        super().__init__()
        self.fastdw = self.depthwise = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastdw":
            self.fastdw += 1
        elif func is torch.ops.aten.convolution.default:
            x, w, groups = args[0], args[1], args[8]
            self.depthwise += groups > 1 and groups == x.shape[1] and w.shape[1] == 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(params=MODELS)
def converted(request, randomize_bn):
    """(name, original in eval mode with calibrated BN statistics, its conversion, report,
    the names convert() must leave)."""
    model, left = build(request.param)
    model = randomize_bn(model).eval()
    new, report = fastdw.convert(model, return_report=True)
    return request.param, model, new, report, left


def test_converts_exactly(converted, accurate):
    """On every backend the converted eval forward is within the float32 bound of the float64
    original, and dispatches no stock depthwise convolution, only fastdw ops; the report leaves
    exactly what the model's own forward holds; the state_dict (keys and tensors) is the
    original's and loads into the original class; the original keeps its own module tree and
    tensors (inplace=False)."""
    name, model, new, report, left = converted
    x = torch.randn(2, 3, 32, 32)
    for name_ in backends():
        with torch.no_grad(), backend.use_backend(name_):
            out = new(x)
        assert accurate(out, model, x), name_
    with torch.no_grad():
        with CountConvs() as stock:
            model(x)
        with CountConvs() as fused:
            new(x)
    assert stock.depthwise > 0 and fused.depthwise == 0 and fused.fastdw >= stock.depthwise
    with torch.no_grad():  # each converted block binds its plan (not the unfused fallback)
        plans = [m._bind() for m in new.modules() if isinstance(m, FusedChain)]
    assert all(isinstance(plan, list) and plan for plan in plans)
    assert {entry.name for entry in report.left} == left, str(report)
    assert report.converted and all(entry.into for entry in report.converted)

    assert list(new.state_dict()) == list(model.state_dict())
    for (key, a), b in zip(new.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), key
    fresh, _ = build(name)
    fresh.load_state_dict(new.state_dict(), strict=True)
    assert [(n, type(m)) for n, m in model.named_modules()] == \
        [(n, type(m)) for n, m in fresh.named_modules()]
    ours = {p.data_ptr() for p in new.parameters()}
    assert not ours & {p.data_ptr() for p in model.parameters()}


@pytest.mark.parametrize("name", MODELS)
def test_training_gradients_match(name, float32_bound, randomize_bn):
    """In training (BatchNorm batch statistics, stochastic depth / DropPath drawing the same
    masks from the same seed) the converted model's parameter gradients, all together, are
    within float32_bound of the float64 original's, given the float32 original's own error."""
    kwargs = {"drop_path_rate": 0.2} if name.startswith("timm") else {}
    model, _ = build(name, **kwargs)
    model = randomize_bn(model).train()
    new = fastdw.convert(model)
    x = torch.randn(2, 3, 32, 32)
    weight = torch.randn(2, 1000)  # a loss that weighs every logit differently

    def grads(m, dtype):
        m = copy.deepcopy(m).to(dtype)
        torch.manual_seed(1)
        (m(x.to(dtype)) * weight.to(dtype)).sum().backward()
        return {k: p.grad for k, p in m.named_parameters()}

    ref64, stock32, ours = (grads(m, dtype) for m, dtype in (
        (model, torch.float64), (model, torch.float32), (new, torch.float32)))
    assert list(ours) == list(ref64) and None not in ours.values()
    ref64, stock32, ours = (torch.cat([g.flatten() for g in d.values()])
                            for d in (ref64, stock32, ours))
    # All gradients as one vector: some are zero in exact arithmetic (the bias of a BN whose
    # output the next training-mode BN normalises), which no relative error can measure alone.
    assert numerics.rel_err(ours, ref64) < float32_bound(stock32, ref64)


def test_stochastic_depth_is_the_modules_in_training():
    """torchvision's EfficientNet blocks keep StochasticDepth on the residual: in training the
    converted blocks draw the same rows as the original's from the same seed (a float32
    difference apart), and other rows from another seed."""
    model = torchvision.models.efficientnet_b0(stochastic_depth_prob=0.5).train()
    new = fastdw.convert(model)
    assert type(new.features[2][1]).__name__ == "FusedChain"
    x = torch.randn(4, 3, 32, 32)
    outs = []
    for m, seed in ((model, 3), (new, 3), (new, 4)):
        torch.manual_seed(seed)
        outs.append(m.features[:4](x))
    same, other = (numerics.rel_err(out, outs[0]) for out in outs[1:])
    assert same < numerics.REL_TOL[torch.float32] < 1e-2 < other
