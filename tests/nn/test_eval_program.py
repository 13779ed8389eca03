"""fastdw.models' eval forward as one cached C++ program (fastdw.nn.freeze.eval_forward): the
same result as the module-by-module forward and the float64 model; rebuilt after every kind of
edit; never used where the module path must run (hooks, grad, training, dropout in training
mode, replaced forwards, other backends, autocast); built once, not per call."""
import copy
import importlib
import pickle

import pytest
import torch
from torch import nn

import fastdw.models
from fastdw import backend
from fastdw.nn import InvertedResidualV3, _fold, freeze

freeze_module = importlib.import_module("fastdw.nn.freeze")  # fastdw.nn.freeze is the function

pytestmark = pytest.mark.skipif(
    "cpp" not in backend.usable("cpu"),
    reason=f"needs fastdw._C (the cpp backend): {backend.info()['cpp']['reason']}")


def differs(out, other):
    return ((out - other).norm() / other.norm()).item() > 1e-3


def module_path(model, x):
    """model(x) module by module: under grad mode the program never runs."""
    with torch.enable_grad():
        return model(x).detach()


def program_of(model):
    """The cached program (a FrozenModel), False for a cached refusal, None for no cache."""
    entry = model.__dict__.get("_fold_cache")
    return None if entry is None else entry[1]


@pytest.fixture
def builds(monkeypatch):
    """How many programs eval_forward builds."""
    count = []
    real = freeze_module._build
    monkeypatch.setattr(freeze_module, "_build",
                        lambda *args: count.append(1) or real(*args))
    return count


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large",
                                  "mobilenet_v3_small"])
def test_eval_forward_is_one_program_matching_the_module_path(name, randomize_bn, builds,
                                                             accurate):
    model = randomize_bn(getattr(fastdw.models, name)(num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 72)
    with torch.no_grad():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = model(x)
        again = [model(x) for _ in range(3)]
    assert builds == [1]  # built once: building changes nothing the stamp sees
    assert program_of(model)
    # the kernels ran inside the program, not one fastdw op per module
    assert not any(e.name.startswith("fastdw") for e in prof.events())
    for other in again:
        torch.testing.assert_close(other, out, rtol=0, atol=0)
    torch.testing.assert_close(out, freeze(model)(x), rtol=0, atol=0)
    assert accurate(out, model, x) and accurate(module_path(model, x), model, x)


def test_inputs_in_any_layout_and_one_pixel_images(randomize_bn, accurate):
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    base = torch.randn(2, 3, 40, 48)
    variants = [base.contiguous(memory_format=torch.channels_last),
                torch.randn(2, 3, 80, 48)[:, :, ::2],  # strided rows
                torch.complex(torch.zeros_like(base), -base).conj().imag,  # behind a neg bit
                torch.randn(1, 3, 1, 1)]
    with torch.no_grad():
        for x in variants:
            out = model(x)
            assert program_of(model)
            assert accurate(out, model, x)


def test_every_edit_rebuilds_the_program(randomize_bn, accurate):
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    last = model.features[-1]  # edits near the output, so that each one shows
    replacement = randomize_bn(InvertedResidualV3(96, 5, 576, 96, 1, act="hardswish",
                                                  squeeze_channels=144), seed=3).eval()
    edits = [
        lambda: last[1].running_var.mul_(3),  # a buffer in place
        lambda: setattr(last[1], "eps", 0.25),  # an attribute
        lambda: model.classifier[3].weight.mul_(-1),  # a parameter in place
        lambda: setattr(last[0].weight, "data", torch.randn_like(last[0].weight)),  # swapped
        lambda: model.features.__setitem__(-2, replacement),  # a module replaced
        lambda: model.load_state_dict(  # new weights copied in
            randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10), seed=5).state_dict()),
    ]
    with torch.no_grad():
        before = model(x)
        for edit in edits:
            edit()
            after = model(x)
            assert differs(after, before), edit
            assert accurate(after, model, x)
            before = after


def test_module_path_where_the_program_cannot_stand_in(randomize_bn, accurate, monkeypatch):
    model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=10)).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        fast = model(x)
    assert program_of(model)
    seen = []
    block = model.features[4]  # a block's hooks run only module by module
    for register in (block.register_forward_hook, block.register_forward_pre_hook,
                     nn.modules.module.register_module_forward_hook):
        handle = register(lambda *args: seen.append(1))
        with torch.no_grad():
            assert accurate(model(x), model, x)
        handle.remove()
        assert seen, register
        seen.clear()
    with fastdw.use_backend("reference"), torch.no_grad():
        assert accurate(model(x), model, x)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert freeze_module.eval_forward(model, x) is None  # autocast is the modules' business
        assert freeze_module.eval_forward(model, x.double()) is None
    with torch.no_grad():
        assert freeze_module.eval_forward(model, x) is not None
    assert model(x).grad_fn is not None  # grad mode: autograd through the modules
    model.classifier[0].train()  # Monte Carlo dropout: only the dropout in training mode
    with torch.no_grad():
        assert differs(model(x), model(x))
    model.classifier[0].eval()
    monkeypatch.setattr(nn.Hardtanh, "forward", lambda self, t: t * 0)  # ReLU6's, on the class
    with torch.no_grad():
        zeroed = model(x)
    assert accurate(zeroed, model, x)
    assert differs(zeroed, fast)
    monkeypatch.undo()
    with torch.no_grad():
        torch.testing.assert_close(model(x), fast, rtol=0, atol=0)
    assert program_of(model)
    model.train()
    with torch.no_grad():
        assert differs(model(x), fast)  # batch statistics (which also update the running ones)


def test_stamp_sees_a_class_swap(randomize_bn):
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    stamp = _fold._stamp(model, whole=True)
    assert _fold._unchanged(stamp)
    model.classifier[2].__class__ = nn.Identity
    assert not _fold._unchanged(stamp)


def test_a_refusal_is_cached(randomize_bn, accurate, builds):
    model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=10)).eval()
    model.features[1] = nn.Sequential(model.features[1], nn.MaxPool2d(1))  # freeze() refuses
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        outs = [model(x) for _ in range(3)]
    assert builds == [1] and program_of(model) is False
    for out in outs:
        assert accurate(out, model, x)


def test_inference_tensor_weights_take_the_module_path(randomize_bn, accurate, builds):
    with torch.inference_mode():  # parameters are inference tensors: no version counters
        model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=10)).eval()
        x = torch.randn(1, 3, 64, 64)
        outs = [model(x) for _ in range(2)]
    assert builds == []
    for out in outs:
        assert accurate(out, model, x)


def test_copies_pickles_and_conversions_drop_the_program(randomize_bn):
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        twin = copy.deepcopy(model)
        loaded = pickle.loads(pickle.dumps(model))
        twin.classifier[3].weight.mul_(2)
        torch.testing.assert_close(loaded(x), out, rtol=0, atol=0)
        assert differs(twin(x), out)  # its own weights, not model's
        torch.testing.assert_close(model(x), out, rtol=0, atol=0)
        model.double()  # the float32 program (and the tensors it views) is dropped at once
        assert program_of(model) is None
        assert program_of(model) is None and model(x.double()).dtype == torch.float64


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts_agree(threads, randomize_bn, accurate):
    model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=10)).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            other = model(x)
        finally:
            torch.set_num_threads(old)
    assert accurate(other, model, x) and accurate(out, model, x)


@pytest.mark.parametrize("shape", [(1, 4, 32, 32), (0, 3, 32, 32), (3, 32, 32)])
def test_bad_inputs_get_the_module_paths_errors(shape):
    model = fastdw.models.mobilenet_v2(num_classes=10).eval()
    x = torch.randn(shape)
    with pytest.raises(Exception) as module_error:
        module_path(model, x)
    with torch.no_grad(), pytest.raises(type(module_error.value)) as error:
        model(x)
    assert str(error.value) == str(module_error.value)
