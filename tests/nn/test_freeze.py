"""fastdw.nn.freeze: a model's eval forward as one C++ program (csrc/cpu/program.cpp), compared
with the float64 model, the live eval forward and torchvision; a snapshot that later edits do not
reach; clear errors for what it cannot run and for bad inputs."""
import concurrent.futures
import copy
import pickle
import re

import pytest
import torch
import torchvision
from torch import nn

import fastdw.models
from fastdw import backend
from fastdw.nn import (
    ConvBNAct,
    DWConvBNAct,
    FrozenModel,
    InvertedResidual,
    InvertedResidualV3,
    Linear,
    convert,
    freeze,
)
from numerics import REL_TOL, rel_err

pytestmark = pytest.mark.skipif(
    "cpp" not in backend.usable("cpu"),
    reason=f"needs fastdw._C (the cpp backend): {backend.info()['cpp']['reason']}")

MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")


def as_float64(module, x):
    """module(x) computed in float64 (on a copy of the module: the original stays float32)."""
    with torch.no_grad():
        return copy.deepcopy(module).double()(x.double())


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", MODELS)
def test_frozen_models_match_float64_and_the_live_model(name, channels_last, randomize_bn,
                                                        accurate):
    model = randomize_bn(getattr(fastdw.models, name)(num_classes=20)).eval()
    x = torch.randn(2, 3, 96, 80)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    frozen = freeze(model)
    out = frozen(x)
    assert out.shape == (2, 20) and out.dtype == torch.float32
    assert accurate(out, model, x)
    assert accurate(model(x).detach(), model, x)  # grad mode: the module-by-module forward
    with torch.no_grad():  # the model's own eval forward runs the same steps (eval_forward)
        model(x)  # (from its second call on, once it has seen the model unchanged)
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    assert frozen.steps[0].startswith("conv+") and frozen.steps[-1] == "linear"
    assert "global_avg_pool" in frozen.steps


def test_v3_steps_fuse_the_classifier_activation(randomize_bn):
    frozen = freeze(randomize_bn(fastdw.models.mobilenet_v3_small()).eval())
    # stem, 11 blocks, last conv, pool, Linear+Hardswish (Dropout dropped), Linear
    assert frozen.steps == ("conv+hardswish", *["inverted_residual"] * 11,
                            "pwconv_bn_act+hardswish", "global_avg_pool", "linear+hardswish",
                            "linear")


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small"])
def test_converted_torchvision_model(name, randomize_bn, accurate):
    model = randomize_bn(getattr(torchvision.models, name)(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    assert accurate(freeze(convert(copy.deepcopy(model)))(x), model, x)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_agree(threads, batch, randomize_bn, accurate):
    # batch 1 with 1000 classes: the classifier is one row, split over threads by columns
    model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=1000)).eval()
    x = torch.randn(batch, 3, 64, 72)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = freeze(model)(x)
    finally:
        torch.set_num_threads(before)
    assert accurate(out, model, x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_sequential_keeps_the_input_layout(channels_last, randomize_bn, accurate):
    model = randomize_bn(fastdw.models.mobilenet_v3_large()).eval()
    features = model.features[:6]
    x = torch.randn(2, 3, 40, 36)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = freeze(features)(x)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=layout)
    assert accurate(out, features, x)


def test_every_step_kind_and_activation_placement(randomize_bn, accurate):
    # depthwise with a channel multiplier (a general conv step), pointwise and depthwise
    # kernels, an activation after a block (its own step), after a layer with act "none"
    # (fused), a Linear without bias, a plain nn.Linear with its activation fused.
    seq = nn.Sequential(
        ConvBNAct(3, 8, 3, 2, act="relu"),
        DWConvBNAct(8, 3, 1, multiplier=2, act="relu6"),
        InvertedResidual(16, 16, 1, 4),
        nn.SiLU(),
        ConvBNAct(16, 24, 1, act="none"),
        nn.Hardswish(),
        DWConvBNAct(24, 5, 2, dilation=2, act="none"),
        nn.ReLU(inplace=True),
        nn.Identity(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        Linear(24, 12, bias=False),
        nn.Dropout(0.5),
        nn.Linear(12, 5),
        nn.Hardsigmoid())
    randomize_bn(seq).eval()
    frozen = freeze(seq)
    assert frozen.steps == ("conv+relu", "conv+relu6", "inverted_residual", "silu",
                            "pwconv_bn_act+hardswish", "dwconv_bn_act+relu", "global_avg_pool",
                            "linear", "linear+hardsigmoid")
    x = torch.randn(2, 3, 30, 26)
    assert accurate(frozen(x), seq, x)
    head = seq[11:]  # a Sequential may also start at a Linear: it then takes (N, C)
    pooled = torch.randn(3, 24)
    assert accurate(freeze(head)(pooled), head, pooled)
    pool_first = freeze(seq[9:])  # takes any channel count until a Linear
    y = torch.randn(2, 24, 5, 3)
    assert rel_err(pool_first(y), as_float64(seq[9:], y)) < REL_TOL[torch.float32]
    with pytest.raises(ValueError, match=r"non-empty \(N, C, H, W\), got shape \(2, 24\)"):
        pool_first(y[:, :, 0, 0])
    for bad in (seq[:10], nn.Sequential(*seq[:10], nn.Linear(24, 5))):
        with pytest.raises(TypeError, match=r"9 \(AdaptiveAvgPool2d\) must be followed by "
                                            r"Flatten\(\)"):
            freeze(bad)


def test_a_snapshot_that_later_edits_do_not_reach(randomize_bn, accurate):
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    frozen = freeze(model)
    before = frozen(x)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
        model.features[3].block[1][1].running_var.mul_(4)
        model.features[1].block[0][1].eps = 0.5
        live = model(x)
    assert not torch.allclose(live, before, atol=1e-3)  # the edits change the model's output
    torch.testing.assert_close(frozen(x), before, rtol=0, atol=0)
    assert accurate(freeze(model)(x), model, x)  # freeze again: edits seen


def test_models_made_and_frozen_under_inference_mode(randomize_bn, accurate):
    with torch.inference_mode():  # parameters are inference tensors
        model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=10)).eval()
        frozen = freeze(model)
        x = torch.randn(1, 3, 64, 64)
        out = frozen(x)
        with torch.no_grad():
            torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    assert accurate(out, model, x)


def test_a_default_device_does_not_count_as_a_watching_mode(randomize_bn, accurate):
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.device("cpu"):
        out = freeze(model)(x)
    assert accurate(out, model, x)


def test_output_carries_no_graph_under_grad_mode(randomize_bn):
    model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=10)).eval()
    out = freeze(model)(torch.randn(1, 3, 64, 64))
    assert not out.requires_grad and out.grad_fn is None


def test_freeze_rejects_what_it_cannot_run(randomize_bn):
    model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=10))
    with pytest.raises(ValueError, match=r"eval-mode model: features\.0\.1 is training"):
        freeze(model.train())
    model.eval()
    model.features[3].train()
    with pytest.raises(ValueError, match=r"eval-mode model: features\.3\.conv\.0\.1 is training"):
        freeze(model)
    model.eval()
    model.classifier[0].train()
    with pytest.raises(ValueError, match=r"classifier\.0 is in training mode"):
        freeze(model)
    model.eval()
    handle = model.features[4].register_forward_hook(lambda *args: None)
    with pytest.raises(ValueError, match=r"forward hooks \(found on features\.4\)"):
        freeze(model)
    handle.remove()
    with pytest.raises(TypeError, match="float32 CPU model"):
        freeze(model.double())
    with pytest.raises(TypeError, match="must be an nn.Module"):
        freeze(lambda x: x)
    with pytest.raises(TypeError, match=r"takes a MobileNet or an nn.Sequential, got Linear"):
        freeze(nn.Linear(3, 4))
    with pytest.raises(TypeError, match=r"cannot run 1 \(MaxPool2d\)"):
        freeze(nn.Sequential(ConvBNAct(3, 8), nn.MaxPool2d(2)).eval())
    with pytest.raises(TypeError, match=r"1 takes a 4-D input but gets the 2-D output"):
        freeze(nn.Sequential(nn.Linear(3, 8), ConvBNAct(8, 8)).eval())
    with pytest.raises(TypeError, match=r"0 \(relu6\) has no layer before it"):
        freeze(nn.Sequential(nn.ReLU6(), ConvBNAct(8, 8)).eval())
    with pytest.raises(ValueError, match="computes nothing"):
        freeze(nn.Sequential(nn.Dropout()).eval())
    # Conv settings the program's steps would not honour.
    for conv in (nn.Conv2d(3, 8, (3, 1), (2, 1), (1, 0), bias=False),
                 nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect", bias=False),
                 nn.Conv2d(3, 8, 3, padding=1)):
        layer = ConvBNAct.wrap(conv, nn.BatchNorm2d(8), "relu").eval()
        with pytest.raises(TypeError, match=r"cannot run 0\.0 \(Conv2d"):
            freeze(nn.Sequential(layer))
    swapped = ConvBNAct(3, 8, act="relu6").eval()
    swapped[2] = nn.ReLU()
    with pytest.raises(TypeError, match=r"activation modules \[ReLU\(\)\] are not its act"):
        freeze(nn.Sequential(swapped))
    no_stats = ConvBNAct(3, 8).eval()
    no_stats[1] = nn.BatchNorm2d(8, track_running_stats=False).eval()
    with pytest.raises(ValueError, match=r"0\.1 has no running statistics"):
        freeze(nn.Sequential(no_stats))
    with pytest.raises(TypeError, match="1 takes 16 channels but gets the 8 of the layer"):
        freeze(nn.Sequential(ConvBNAct(3, 8), ConvBNAct(16, 8, 1)).eval())
    v3 = fastdw.models.mobilenet_v3_small(num_classes=10).eval()
    v3.avgpool = nn.AdaptiveMaxPool2d(1)
    with pytest.raises(TypeError, match="cannot run avgpool"):
        freeze(v3)
    # A torchvision block convert() leaves alone (dilated) is named.
    tv = torchvision.models.mobilenet_v3_large(dilated=True).eval()
    with pytest.raises(TypeError, match=r"features\.\d+ \(InvertedResidual\)"):
        freeze(convert(tv))


def test_frozen_call_rejects_bad_inputs(randomize_bn):
    frozen = freeze(randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval())
    good = torch.randn(1, 3, 64, 64)
    assert frozen(good).shape == (1, 10)
    bad = [
        ([1.0], TypeError, "x must be a torch.Tensor, got list"),
        (good.double(), TypeError, "float32 CPU tensor.*torch.float64"),
        (good.to("meta"), TypeError, "float32 CPU tensor.*meta"),
        (torch.randn(1, 4, 64, 64), ValueError,
         r"\(N, C, H, W\) tensor with C = 3, got shape \(1, 4, 64, 64\)"),
        (torch.randn(3, 64, 64), ValueError, r"\(N, C, H, W\).*got shape \(3, 64, 64\)"),
        (torch.randn(0, 3, 64, 64), ValueError, "non-empty"),
        (good.clone().requires_grad_(), ValueError, "no autograd"),
    ]
    for x, error, message in bad:
        with pytest.raises(error, match=message):
            frozen(x)
    with torch.no_grad():  # no graph to build: a leaf that requires grad is fine
        assert frozen(good.clone().requires_grad_()).shape == (1, 10)
    # functorch transforms: their wrappers never reach the C++ program
    for transform in (torch.func.vmap, torch.func.functionalize):
        with pytest.raises(RuntimeError, match="plain eager calls only"):
            transform(lambda t: frozen(t))(good[None] if transform is torch.func.vmap
                                           else good)


def test_one_pixel_images(randomize_bn, accurate):
    # "same" padding everywhere: a 1x1 image stays 1x1 through all strides.
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    x = torch.randn(2, 3, 1, 1)
    assert accurate(freeze(model)(x), model, x)


def test_replaced_forwards_are_refused(randomize_bn):
    class LoudConv(ConvBNAct):
        def forward(self, x):
            return super().forward(x) * 2

    layer = ConvBNAct(3, 8).eval()
    layer.forward = lambda x: x  # an instance override, as instrumentation does
    subclass = LoudConv(3, 8).eval()
    model = fastdw.models.mobilenet_v2(num_classes=10).eval()
    model.forward = lambda x: x
    for module, where in ((nn.Sequential(layer), "0 (ConvBNAct)"),
                          (nn.Sequential(subclass), "0 (LoudConv)"), (model, "the model")):
        with pytest.raises(TypeError, match=f"{re.escape(where)} has a forward of its own"):
            freeze(module)


def test_autocast_lazy_views_and_a_bias_free_linear(randomize_bn, accurate):
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    model.classifier[3] = nn.Linear(1024, 10, bias=False)
    torch.set_default_dtype(torch.float64)  # the missing bias must still be float32
    try:
        frozen = freeze(model)
    finally:
        torch.set_default_dtype(torch.float32)
    x = torch.randn(1, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a frozen model stays float32
        out = frozen(x)
    assert accurate(out, model, x)
    negated = torch.complex(torch.zeros_like(x), -x).conj().imag  # x, behind a negative bit
    assert negated.is_neg()
    assert accurate(frozen(negated), model, x)


def test_repr_lists_the_steps_and_pickling_says_what_to_do():
    frozen = freeze(nn.Sequential(InvertedResidualV3(8, 3, 16, 8, 1)).eval())
    assert isinstance(frozen, FrozenModel)
    assert repr(frozen) == "FrozenModel(steps=['inverted_residual'])"
    for save in (pickle.dumps, copy.deepcopy):
        with pytest.raises(TypeError, match="save the model's state_dict"):
            save(frozen)


def test_concurrent_calls_and_kept_results(randomize_bn):
    """Runs keep their intermediate outputs in buffers reused by the next run
    (csrc/cpu/output_arena.h): results must not be among them, and runs from several threads at
    once (the GIL is released) must not share them."""
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    features = nn.Sequential(*model.features[:4], nn.Hardswish())  # ends with an act step
    inputs = [torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
              for _ in range(6)]
    for frozen in (freeze(model), freeze(features)):
        alone = [frozen(x) for x in inputs]
        kept = [t.clone() for t in alone]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            together = list(pool.map(frozen, inputs * 4))
        for i, out in enumerate(together):
            torch.testing.assert_close(out, kept[i % len(inputs)], rtol=0, atol=0)
        for out, copy_ in zip(alone, kept):
            torch.testing.assert_close(out, copy_, rtol=0, atol=0)
