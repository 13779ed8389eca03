"""The eval fast path of fastdw.nn modules (fastdw/nn/_fold.py, FusedCall): under no_grad a
fused layer or block calls its C++ kernel directly, skipping the public op's checks and the
custom-op dispatcher, with the op's result bit for bit, and only where the public op would
run that very kernel."""
import copy as copy_module
import pickle

import pytest
import torch
from torch import nn

import fastdw
import fastdw.models
from fastdw import backend
from fastdw.nn import ConvBNAct, DWConvBNAct, InvertedResidual, InvertedResidualV3
from numerics import REL_TOL, rel_err

pytestmark = pytest.mark.skipif(
    "cpp" not in backend.usable("cpu"),
    reason=f"needs fastdw._C (the cpp backend): {backend.info()['cpp']['reason']}")

MODULES = {  # name -> (constructor, the fused op it calls)
    "pointwise": (lambda: ConvBNAct(16, 24, 1, act="relu6"), "pwconv_bn_act"),
    "depthwise 5x5 s2": (lambda: DWConvBNAct(16, 5, 2, act="hardswish"), "dwconv_bn_act"),
    "depthwise dilation 2": (lambda: DWConvBNAct(16, 3, 1, dilation=2), "dwconv_bn_act"),
    "v2 expand": (lambda: InvertedResidual(16, 16, 1, 6), "inverted_residual"),
    "v2 no expand s2": (lambda: InvertedResidual(16, 24, 2, 1), "inverted_residual"),
    "v3 se": (lambda: InvertedResidualV3(16, 5, 48, 16, 1, act="hardswish",
                                         squeeze_channels=16), "inverted_residual"),
}


def build(name, randomize_bn):
    make, op = MODULES[name]
    return randomize_bn(make()).eval(), op


def ops_run(module, x):
    """{"fastdw::<op>", "fastdw_cpp::<op>", ...}: the fastdw ops that module(x) dispatched."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = module(x)
    return out, {e.name for e in prof.events() if e.name.startswith("fastdw")}


def fast_eval(module, x):
    """module(x) under no_grad, after a first call (which goes through the public op)."""
    with torch.no_grad():
        module(x)
        return ops_run(module, x)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", MODULES)
def test_fast_path_is_taken_and_equals_the_op(name, channels_last, randomize_bn):
    module, op = build(name, randomize_bn)
    x = torch.randn(2, 16, 11, 9)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with fastdw.use_backend("cpp"):
        ref = module(x)  # grad enabled, parameters require grad: the public op, on cpp
        out, ran = fast_eval(module, x)
    assert ran == {f"fastdw_cpp::{op}"}
    assert torch.equal(out, ref.detach())
    assert out.stride() == ref.stride()
    with torch.inference_mode():  # an inference-tensor input takes it too
        out, ran = ops_run(module, x.clone())
    assert ran == {f"fastdw_cpp::{op}"} and torch.equal(out, ref)


def test_fast_path_follows_auto_and_env(randomize_bn, monkeypatch):
    module, _ = build("v2 expand", randomize_bn)
    x = torch.randn(1, 16, 8, 8)
    monkeypatch.delenv("FASTDW_BACKEND", raising=False)
    backend.set_backend(None)
    assert fast_eval(module, x)[1] == {"fastdw_cpp::inverted_residual"}  # auto picks cpp
    monkeypatch.setenv("FASTDW_BACKEND", "reference")
    assert fast_eval(module, x)[1] == set()  # reference: stock ops only
    try:
        backend.set_backend("cpp")
        assert fast_eval(module, x)[1] == {"fastdw_cpp::inverted_residual"}
        with fastdw.use_backend("reference"):
            assert fast_eval(module, x)[1] == set()
    finally:
        backend.set_backend(None)


NOT_FAST = {  # case -> (dtype, backend, grad enabled)
    "reference backend": (torch.float32, "reference", False),
    "grad needed": (torch.float32, "cpp", True),
    "float64": (torch.float64, "cpp", False),
    "bfloat16": (torch.bfloat16, "cpp", False),
}


@pytest.mark.parametrize("case", NOT_FAST)
@pytest.mark.parametrize("name", ["pointwise", "v3 se"])
def test_fast_path_is_not_taken_where_the_op_would_not_run_the_cpp_kernel(name, case,
                                                                           randomize_bn):
    module, op = build(name, randomize_bn)
    dtype, backend_name, grad = NOT_FAST[case]
    module, x = module.to(dtype), torch.randn(1, 16, 8, 8, dtype=dtype)
    with fastdw.use_backend(backend_name), torch.set_grad_enabled(grad):
        module(x)
        out, ran = ops_run(module, x)
    if grad:  # autograd records the public op, which runs the kernel
        assert f"fastdw::{op}" in ran
    else:  # the public op hands these to stock ops
        assert f"fastdw_cpp::{op}" not in ran
    with fastdw.use_backend("reference"), torch.no_grad():
        torch.testing.assert_close(out, module(x), rtol=1e-5, atol=1e-5)


def test_depthwise_multiplier_2_runs_no_cpp_kernel(randomize_bn):
    layer = randomize_bn(DWConvBNAct(8, 3, 1, multiplier=2)).eval()
    x = torch.randn(1, 8, 6, 6)
    with fastdw.use_backend("cpp"):
        out, ran = fast_eval(layer, x)
    assert ran == set()  # cpp hands it to reference: stock ops only
    with fastdw.use_backend("reference"), torch.no_grad():
        torch.testing.assert_close(out, layer(x), rtol=0, atol=0)


def test_compiled_module_calls_the_public_op(randomize_bn):
    block, _ = build("v2 expand", randomize_bn)
    x = torch.randn(1, 16, 8, 8)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    with fastdw.use_backend("cpp"):
        fast_eval(block, x)  # the eager module's cache is ready for the fast path
        with torch.no_grad():
            compiled(x)
            out, ran = ops_run(compiled, x)
        assert "fastdw::inverted_residual" in ran
        # The compiled graph folds BN with its own generated code: equal up to rounding.
        torch.testing.assert_close(out, fast_eval(block, x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODULES)
def test_bad_x_raises_value_error_naming_x(name, randomize_bn):
    module, _ = build(name, randomize_bn)
    fast_eval(module, torch.randn(1, 16, 8, 8))
    for bad in (torch.randn(1, 12, 8, 8), torch.randn(16, 8, 8)):
        for grad in (False, True):
            with torch.set_grad_enabled(grad), pytest.raises(ValueError, match=r"^x must"):
                module(bad)
    with torch.no_grad():  # an empty batch: an empty output, as from stock convolutions
        empty, one = module(torch.randn(0, 16, 8, 8)), module(torch.randn(1, 16, 8, 8))
    assert empty.shape == (0, *one.shape[1:])


EDITS = {
    "conv weight in place": lambda m: next(c for c in m.modules()
                                           if isinstance(c, nn.Conv2d)).weight.mul_(2),
    "bn running_var in place": lambda m: last_bn(m).running_var.mul_(2),
    "bn eps": lambda m: setattr(last_bn(m), "eps", 0.5),
    ".data swap": lambda m: setattr(last_bn(m).weight, "data", last_bn(m).weight * 2),
    "new parameter": lambda m: setattr(last_bn(m), "bias", nn.Parameter(last_bn(m).bias + 1)),
    "load_state_dict": lambda m: m.load_state_dict(
        {k: v * 1.5 if v.is_floating_point() else v for k, v in m.state_dict().items()}),
}


def last_bn(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)][-1]


@pytest.mark.parametrize("edit", EDITS)
@pytest.mark.parametrize("name", ["depthwise 5x5 s2", "v3 se"])
def test_fast_path_sees_module_changes(name, edit, randomize_bn):
    module, op = build(name, randomize_bn)
    x = torch.randn(1, 16, 8, 8)
    with fastdw.use_backend("cpp"):
        before, _ = fast_eval(module, x)
        with torch.no_grad():
            EDITS[edit](module)
        after, ran = fast_eval(module, x)
        ref = module(x).detach()  # grad enabled: the public op, folding afresh
    assert ran == {f"fastdw_cpp::{op}"}
    assert torch.equal(after, ref)
    assert not torch.equal(after, before)


def test_fast_path_sees_replaced_stages_and_train_mode(randomize_bn):
    block, _ = build("v2 expand", randomize_bn)
    x = torch.randn(2, 16, 8, 8)
    with fastdw.use_backend("cpp"):
        before, _ = fast_eval(block, x)
        block.conv[1][1] = randomize_bn(nn.BatchNorm2d(96), seed=1).eval()
        after, _ = fast_eval(block, x)
        assert torch.equal(after, block(x).detach()) and not torch.equal(after, before)
        block.train()
        with torch.no_grad():
            trained = block(x)  # batch statistics: the stages one by one, not the fused op
        assert not torch.allclose(trained, after, atol=1e-3)
        assert block.conv[1][1].num_batches_tracked.item() == 1


def test_copies_start_without_the_cache(randomize_bn):
    """The cache's stamp refers to its module's own dicts: deepcopy and pickle leave it out."""
    block, _ = build("v3 se", randomize_bn)
    x = torch.randn(1, 16, 8, 8)
    with fastdw.use_backend("cpp"):
        out, _ = fast_eval(block, x)
        for copy in (copy_module.deepcopy(block), pickle.loads(pickle.dumps(block))):
            assert "_fold_cache" not in copy.__dict__
            assert torch.equal(fast_eval(copy, x)[0], out)
            with torch.no_grad():
                last_bn(copy).running_var.mul_(2)
            assert not torch.equal(fast_eval(copy, x)[0], out)
        assert torch.equal(fast_eval(block, x)[0], out)


def test_linear_runs_the_cpp_gemm_under_no_grad():
    layer = fastdw.nn.Linear(96, 40)
    x = torch.randn(3, 96)
    ref = torch.nn.functional.linear(x.double(), layer.weight.double(), layer.bias.double())
    with torch.no_grad():
        for _ in range(2):  # the first call checks the arguments through the public op
            out, ran = ops_run(layer, x)
    assert "fastdw_cpp::pwconv_bn_act" in ran and "fastdw::pwconv_bn_act" not in ran
    assert out.shape == (3, 40) and out.dtype == torch.float32
    assert rel_err(out, ref) < REL_TOL[torch.float32]
    with torch.no_grad():
        layer.weight.mul_(-2)  # an in-place edit between calls is seen
        out = layer(x)
    ref = torch.nn.functional.linear(x.double(), layer.weight.double(), layer.bias.double())
    assert rel_err(out, ref) < REL_TOL[torch.float32]


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # Linear(0, 8)
@pytest.mark.parametrize("case", ["grad", "float64", "reference", "3-D input", "empty batch",
                                  "no input features"])
def test_linear_is_nn_linear_elsewhere(case):
    layer = fastdw.nn.Linear(0 if case == "no input features" else 32, 8)
    shapes = {"3-D input": (2, 5, 32), "empty batch": (0, 32), "no input features": (4, 0)}
    x = torch.randn(shapes.get(case, (4, 32)))
    if case == "float64":
        layer, x = layer.double(), x.double()
    with torch.set_grad_enabled(case == "grad"), \
            fastdw.use_backend("reference" if case == "reference" else "cpp"):
        out, ran = ops_run(layer, x)
    assert not ran
    assert torch.equal(out, torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_model_classifiers_use_it():
    model = fastdw.models.mobilenet_v3_small()
    assert [type(m) for m in model.classifier if isinstance(m, nn.Linear)] == [fastdw.nn.Linear] * 2


@pytest.mark.parametrize("case", ["wrong in_features", "float64 bias"])
def test_linear_errors_are_nn_linears(case):
    layer = fastdw.nn.Linear(32, 8)
    x = torch.randn(4, 31 if case == "wrong in_features" else 32)
    if case == "float64 bias":
        layer.bias.data = layer.bias.data.double()
    with torch.no_grad(), pytest.raises(RuntimeError) as ours:
        layer(x)
    with torch.no_grad(), pytest.raises(RuntimeError) as stock:
        torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert str(ours.value) == str(stock.value)



@pytest.mark.parametrize("context", ["meta device", "float64 default dtype"])
def test_linear_after_a_default_device_or_dtype_change(context):
    """Its unit scale is a float32 CPU tensor whatever torch.device(...) or
    torch.set_default_dtype say when it is first made, and stays usable after them."""
    layer = fastdw.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    ref = torch.nn.functional.linear(x.double(), layer.weight.double(), layer.bias.double())
    with torch.no_grad():
        if context == "meta device":
            with torch.device("meta"):
                assert rel_err(layer(x), ref) < REL_TOL[torch.float32]
        else:
            default = torch.get_default_dtype()
            torch.set_default_dtype(torch.float64)
            try:
                layer(x)
            finally:
                torch.set_default_dtype(default)
        out, ran = ops_run(layer, x)
    assert "fastdw_cpp::pwconv_bn_act" in ran  # still the fast path
    assert rel_err(out, ref) < REL_TOL[torch.float32]
