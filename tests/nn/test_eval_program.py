"""fastdw.models' eval forward as one cached C++ program (fastdw/models/eval_program.py): the
same result as the module-by-module forward and the float64 model; rebuilt after every kind of
edit; never used where the module path must run (hooks, grad, training, dropout in training
mode, replaced forwards, other backends, autocast); built once a model has been seen unchanged
by two calls in a row, and then kept."""
import copy
import pickle

import pytest
import torch
from torch import nn

import fastdw.models
from fastdw import backend
from fastdw.models import eval_program
from fastdw.nn import ConvBNAct, InvertedResidualV3, cache, freeze
from numerics import rel_err


pytestmark = pytest.mark.skipif(
    "cpp" not in backend.usable("cpu"),
    reason=f"needs fastdw._C (the cpp backend): {backend.info()['cpp']['reason']}")

MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")


def differs(out, other):
    return rel_err(out, other) > 1e-3


def module_path(model, x):
    """model(x) module by module: under grad mode the program never runs."""
    with torch.enable_grad():
        return model(x).detach()


def program_of(model):
    """The cached program (a FrozenModel), False for a cached refusal, None for none yet."""
    entry = model.__dict__.get("_fold_cache")
    return None if entry is None else entry[1]


class _CountedProgram:
    def __init__(self, program, runs):
        self.program, self.runs = program, runs

    def run(self, x):
        self.runs.append(1)
        return self.program.run(x)


@pytest.fixture
def spy(monkeypatch):
    """spy.builds: one entry per program built; spy.runs: one per program run."""
    class Spy:
        builds, runs = [], []

    real = eval_program.build

    def build(*args):
        Spy.builds.append(1)
        builder = real(*args)
        builder.program = _CountedProgram(builder.program, Spy.runs)
        return builder
    monkeypatch.setattr(eval_program, "build", build)
    return Spy


def calls(model, x, n):
    with torch.no_grad():
        return [model(x) for _ in range(n)]


@pytest.mark.parametrize("name", MODELS)
def test_eval_forward_is_one_program_matching_the_module_path(name, randomize_bn, spy,
                                                             accurate):
    model = randomize_bn(getattr(fastdw.models, name)(num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 72)
    first, *outs = calls(model, x, 4)
    # the first call runs module by module and stamps the model; the second finds it
    # unchanged, builds the program and runs it; later calls run it
    assert spy.builds == [1] and len(spy.runs) == 3
    for out in outs:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=0)
    torch.testing.assert_close(outs[0], freeze(model)(x), rtol=0, atol=0)
    assert accurate(first, model, x) and accurate(outs[0], model, x)
    with torch.no_grad(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x)
    # the kernels ran inside the program, not one fastdw op per module
    assert not any(e.name.startswith("fastdw") for e in prof.events())


def test_inputs_in_any_layout_and_one_pixel_images(randomize_bn, spy, accurate):
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    base = torch.randn(2, 3, 40, 48)
    calls(model, base, 2)
    variants = [base.contiguous(memory_format=torch.channels_last),
                torch.randn(2, 3, 80, 48)[:, :, ::2],  # strided rows
                torch.complex(torch.zeros_like(base), -base).conj().imag,  # behind a neg bit
                torch.randn(1, 3, 1, 1)]
    for i, x in enumerate(variants, 2):
        out, = calls(model, x, 1)
        assert len(spy.runs) == i and accurate(out, model, x)


def test_every_edit_is_seen(randomize_bn, spy, accurate):
    # Edits to what the program folded rebuild it; a tensor it holds itself (the classifier's
    # weights, a conv weight) is read at each run, so an in-place edit of one needs no rebuild.
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    last = model.features[-1]  # edits near the output, so that each one shows
    replacement = randomize_bn(InvertedResidualV3(96, 5, 576, 96, 1, act="hardswish",
                                                  squeeze_channels=144), seed=3).eval()
    edits = [  # (edit, whether it rebuilds)
        (lambda: last[1].running_var.mul_(3), True),  # a folded buffer in place
        (lambda: setattr(last[1], "eps", 0.25), True),  # an attribute
        (lambda: model.classifier[3].weight.mul_(-1), False),  # a held parameter in place
        (lambda: last[0].weight.mul_(-1), False),
        (lambda: setattr(last[0].weight, "data", torch.randn_like(last[0].weight)),
         True),  # swapped: the program's view would be of the old memory
        (lambda: model.features.__setitem__(-2, replacement), True),  # a module replaced
        (lambda: model.load_state_dict(  # new weights copied in
            randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10), seed=5).state_dict()),
         True),
    ]
    *_, before = calls(model, x, 2)
    builds = 1
    for edit, rebuilds in edits:
        with torch.no_grad():
            edit()
        stamped, rebuilt = calls(model, x, 2)
        builds += rebuilds
        assert len(spy.builds) == builds, edit
        assert differs(rebuilt, before), edit
        assert accurate(stamped, model, x) and accurate(rebuilt, model, x)
        before = rebuilt


def test_module_path_where_the_program_cannot_stand_in(randomize_bn, spy, accurate,
                                                      monkeypatch):
    model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=10)).eval()
    x = torch.randn(1, 3, 48, 48)
    *_, fast = calls(model, x, 2)
    assert len(spy.runs) == 1

    def module_path_only(condition):
        runs = len(spy.runs)
        out, _ = calls(model, x, 2)
        assert len(spy.runs) == runs, condition
        return out

    seen = []
    block = model.features[4]  # a block's hooks run only module by module
    for register in (block.register_forward_hook, block.register_forward_pre_hook,
                     model.register_forward_hook, nn.modules.module.register_module_forward_hook):
        handle = register(lambda *args: seen.append(1))
        assert accurate(module_path_only(register), model, x)
        handle.remove()
        assert seen, register
        seen.clear()
    with fastdw.use_backend("reference"):
        assert accurate(module_path_only("reference"), model, x)
    def modules(t):
        return "module path"
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        # autocast is the modules' business (tests/ops/test_autocast.py)
        assert eval_program.eval_forward(model, x, modules) == "module path"
    calls(model, x, 2)  # settled again: the program runs
    with torch.no_grad():
        assert eval_program.eval_forward(model, x.double(), modules) == "module path"
        assert isinstance(eval_program.eval_forward(model, x, modules), torch.Tensor)
    runs = len(spy.runs)
    assert model(x).grad_fn is not None and len(spy.runs) == runs  # grad mode: autograd
    model.classifier[0].train()  # Monte Carlo dropout: only the dropout in training mode
    calls(model, x, 1)
    assert differs(module_path_only("dropout"), module_path_only("dropout"))
    model.classifier[0].eval()
    monkeypatch.setattr(nn.Hardtanh, "forward", lambda self, t: t * 0)  # ReLU6's, on the class
    zeroed = module_path_only("class forward")
    assert accurate(zeroed, model, x) and differs(zeroed, fast)
    monkeypatch.undo()
    model.features[0][2].max_val = 1.0  # the stem's ReLU6 module, which its forward calls
    clamped = module_path_only("max_val")
    assert accurate(clamped, model, x) and differs(clamped, fast)
    model.features[0][2].max_val = 6.0
    torch.testing.assert_close(calls(model, x, 2)[1], fast, rtol=0, atol=0)
    assert program_of(model)
    model.train()  # the program is dropped at once, not kept through training
    assert program_of(model) is None
    with torch.no_grad():
        assert differs(model(x), fast)  # batch statistics (which also update the running ones)


def test_program_blocks_keep_their_squeeze_excite_act_and_gate(randomize_bn, accurate):
    """A block's program step runs its squeeze-excite as the block does: EfficientNet's (SiLU,
    sigmoid gate) beside MobileNetV3's (ReLU, hardsigmoid), never the latter for both."""
    model = randomize_bn(nn.Sequential(
        ConvBNAct(3, 16, 3, 2, act="silu"),
        InvertedResidualV3(16, 3, 64, 24, 2, act="silu", squeeze_channels=4, se_act="silu",
                           se_gate="sigmoid"),
        InvertedResidualV3(24, 5, 72, 24, 1, act="hardswish", squeeze_channels=24))).eval()
    x = torch.randn(2, 3, 32, 30)
    frozen = freeze(model)
    assert frozen.steps == ("conv+silu", "inverted_residual", "inverted_residual")
    out = frozen(x)
    assert accurate(out, model, x)
    with torch.no_grad():
        assert rel_err(out, model(x)) < 1e-5  # the module path: one fused op per block
    for se, kind in [(model[1].block[2], ("relu", "hardsigmoid")),
                     (model[2].block[2], ("silu", "sigmoid"))]:
        changed = copy.deepcopy(model)
        se_copy = changed.get_submodule(next(n for n, m in model.named_modules() if m is se))
        se_copy.act, se_copy.gate = kind
        assert differs(freeze(changed)(x), out), kind  # the program sees each one


def test_v3_avgpool_forward_replaced(randomize_bn, spy, accurate):
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    model.avgpool.forward = lambda t: t.amax((2, 3), keepdim=True)
    outs = calls(model, x, 3)
    assert spy.runs == [] and program_of(model) is False
    assert accurate(outs[-1], model, x)


def test_a_forward_replaced_on_the_model_class(randomize_bn, spy, monkeypatch):
    model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=10)).eval()
    monkeypatch.setattr(fastdw.models.MobileNetV2, "_forward_modules",
                        lambda self, x: x.mean((2, 3)))
    x = torch.randn(1, 3, 32, 32)
    for out in calls(model, x, 3):
        torch.testing.assert_close(out, x.mean((2, 3)), rtol=0, atol=0)
    assert spy.runs == [] and program_of(model) is False


def test_stamp_sees_a_class_swap(randomize_bn):
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    stamp = cache.take_stamp(model)
    assert cache.unchanged(stamp)
    model.classifier[2].__class__ = nn.Identity
    assert not cache.unchanged(stamp)


def test_a_refusal_is_cached(randomize_bn, accurate, spy):
    model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=10)).eval()
    model.features[1] = nn.Sequential(model.features[1], nn.MaxPool2d(1)).eval()  # refused
    x = torch.randn(1, 3, 48, 48)
    outs = calls(model, x, 4)
    assert spy.builds == [1] and program_of(model) is False
    for out in outs:
        assert accurate(out, model, x)


def test_models_that_change_on_every_call_are_not_rebuilt_every_call(randomize_bn, spy,
                                                                     accurate):
    model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=10)).eval()
    x = torch.randn(2, 3, 48, 48)
    model.features[-1][1].train()  # a BN adapting to test data: its statistics move per call
    calls(model, x, 3)
    assert spy.builds == []
    model.features[-1][1].eval()
    params = {name: p.clone() for name, p in model.named_parameters()}
    for _ in range(3):  # parameters swapped in and out by functional_call
        with torch.no_grad():
            swapped = torch.func.functional_call(model, params, (x,))
            plain = model(x)
        torch.testing.assert_close(swapped, plain, rtol=1e-5, atol=1e-5)
    assert spy.builds == []
    assert accurate(plain, model, x)


def test_inference_tensor_weights_run_the_program(randomize_bn, accurate, spy):
    # Inference tensors have no version counters; the stamp reads none (fastdw/nn/cache.py).
    with torch.inference_mode():
        model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=10)).eval()
        x = torch.randn(1, 3, 64, 64)
        before = calls(model, x, 3)
    assert all(accurate(out, model, x) for out in before)
    with torch.inference_mode():
        model.classifier[1].weight.mul_(-1)
        after = calls(model, x, 2)
    assert all(accurate(out, model, x) for out in after)
    assert differs(after[-1], before[-1])
    assert len(spy.builds) == 1 and len(spy.runs) == 4  # the program reads the Linear weight


def test_copies_pickles_and_conversions(randomize_bn, spy):
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    *_, out = calls(model, x, 2)
    twin = copy.deepcopy(model)
    loaded = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        twin.classifier[3].weight.mul_(2)
    torch.testing.assert_close(calls(loaded, x, 2)[1], out, rtol=0, atol=0)
    assert differs(calls(twin, x, 2)[1], out)  # its own weights, not model's
    builds = len(spy.builds)
    for _ in range(3):  # a .to() that changes nothing keeps the program
        with torch.no_grad():
            torch.testing.assert_close(model.to("cpu", torch.float32)(x), out, rtol=0, atol=0)
    assert len(spy.builds) == builds
    model.double()  # the float32 program (and the tensors it views) is dropped at once
    assert program_of(model) is None
    assert calls(model, x.double(), 1)[0].dtype == torch.float64


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts_agree(threads, randomize_bn, spy, accurate):
    model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=10)).eval()
    x = torch.randn(3, 3, 64, 64)
    *_, out = calls(model, x, 2)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        other, = calls(model, x, 1)
    finally:
        torch.set_num_threads(old)
    assert len(spy.runs) == 2
    assert accurate(other, model, x) and accurate(out, model, x)


@pytest.mark.parametrize("shape", [(1, 4, 32, 32), (3, 32, 32)])  # N = 0 is no error
def test_bad_inputs_get_the_module_paths_errors(shape):
    model = fastdw.models.mobilenet_v2(num_classes=10).eval()
    calls(model, torch.randn(1, 3, 32, 32), 2)
    x = torch.randn(shape)
    with pytest.raises(Exception) as module_error:
        module_path(model, x)
    with torch.no_grad(), pytest.raises(type(module_error.value)) as error:
        model(x)
    assert str(error.value) == str(module_error.value)
