"""fastdw/ops/dispatch.py: a public op calls its backend kernel directly only where nothing could
tell it from the custom op (same result bit for bit); wherever autograd, tracing, a torch
function / dispatch mode or a tensor subclass is involved, the custom op runs, and where the
custom op cannot carry the call (dual tensors, functorch transforms), the stock composite."""
import contextlib

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import fastdw.backend
import fastdw.models
import fastdw.nn
from fastdw import ops


def dw_args(requires_grad=False):
    w = torch.randn(8, 1, 3, 3, requires_grad=requires_grad)
    return torch.randn(2, 8, 6, 5), w, torch.rand(8) + 0.5, torch.randn(8)


CALLS = {  # op name -> call on fresh inputs (the weight possibly requiring grad)
    "dwconv_bn_act": lambda rg: ops.dwconv_bn_act(*dw_args(rg), act="hardswish"),
    "pwconv_bn_act": lambda rg: ops.pwconv_bn_act(
        torch.randn(2, 8, 4, 4), torch.randn(6, 8, requires_grad=rg), act="relu",
        residual=torch.randn(2, 6, 4, 4)),
    "inverted_residual": lambda rg: ops.inverted_residual(
        torch.randn(1, 8, 6, 6), torch.randn(16, 8, requires_grad=rg), None, None,
        torch.randn(16, 1, 3, 3), None, None, torch.randn(8, 16), None, None,
        se_w1=torch.randn(4, 16), se_b1=torch.randn(4), se_w2=torch.randn(16, 4),
        se_b2=torch.randn(16)),
}


def fastdw_events(fn):
    """(fn(), the names of the fastdw ops it dispatched)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn()
    return out, {e.name for e in prof.events() if e.name.startswith("fastdw")}


@pytest.mark.parametrize("name", CALLS)
def test_direct_where_unobserved_and_equal_to_the_custom_op(name, backend_name):
    call = CALLS[name]
    with fastdw.use_backend(backend_name):
        torch.manual_seed(1)
        with torch.no_grad():
            direct, ran = fastdw_events(lambda: call(True))
        assert f"fastdw::{name}" not in ran
        torch.manual_seed(1)
        grad_free, ran = fastdw_events(lambda: call(False))  # grad mode, nothing requires grad
        assert f"fastdw::{name}" not in ran
        torch.manual_seed(1)
        through_op, ran = fastdw_events(lambda: call(True))  # autograd records the op
        assert f"fastdw::{name}" in ran and through_op.grad_fn is not None
    torch.testing.assert_close(direct, through_op.detach(), rtol=0, atol=0)
    torch.testing.assert_close(grad_free, through_op.detach(), rtol=0, atol=0)


class SeenOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


class SeenFunctions(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", [SeenOps, SeenFunctions])
@pytest.mark.parametrize("name", CALLS)
def test_modes_see_the_custom_op(name, mode):
    with torch.no_grad(), mode() as watcher:
        CALLS[name](False)
    assert any(f"fastdw.{name}" in s for s in watcher.seen), watcher.seen


def test_jit_trace_records_the_custom_op():
    x, w, scale, shift = dw_args()
    with torch.no_grad():
        traced = torch.jit.trace(lambda t: ops.dwconv_bn_act(t, w, scale, shift), (x,))
    assert "fastdw::dwconv_bn_act" in str(traced.graph)


def test_dual_inputs_run_the_stock_composite():
    # The custom ops have no forward-mode formula (they would drop the tangent): a dual input
    # runs the reference composite instead (tests/ops/test_autograd_compat.py: its tangents).
    x, w, scale, shift = dw_args()
    with torch.no_grad(), fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.randn_like(x))
        out, ran = fastdw_events(lambda: ops.dwconv_bn_act(dual, w, scale, shift))
        assert "fastdw::dwconv_bn_act" not in ran and fwAD.unpack_dual(out).tangent is not None
        # an open dual level without dual inputs: the custom op runs as usual
        _, ran = fastdw_events(lambda: ops.dwconv_bn_act(x, w, scale, shift))
    assert "fastdw::dwconv_bn_act" in ran


def test_fake_tensors_take_the_fake_kernel():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        x, w, scale, shift = (mode.from_tensor(t) for t in dw_args())
        with torch.no_grad():
            out = ops.dwconv_bn_act(x, w, scale, shift, stride=2)
    assert out.shape == (2, 8, 3, 3)


def test_flop_counter_sees_a_fused_model_classifier():
    # fastdw.nn.Linear takes nn.Linear's own forward under a mode, so its FLOPs are counted.
    model = fastdw.models.mobilenet_v2(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)  # warm the fused modules' caches
        with FlopCounterMode(display=False) as counter:
            model.classifier(torch.randn(1, 1280))
    assert counter.get_total_flops() == 2 * 1280 * 10


@pytest.mark.skipif("cpp" not in fastdw.backend.usable("cpu"),
                    reason="freeze() needs fastdw._C (the cpp backend), which is not built")
def test_frozen_model_refuses_modes():
    frozen = fastdw.nn.freeze(nn.Sequential(fastdw.nn.ConvBNAct(3, 8).eval()))
    x = torch.randn(1, 3, 8, 8)
    for mode in (SeenOps, SeenFunctions):
        with mode(), pytest.raises(RuntimeError, match="plain eager calls only"):
            frozen(x)
    assert frozen(x).shape == (1, 8, 8, 8)


# Kernel first (dispatch.cpp_direct / try_cpp): the common cpp call runs its C++ kernel before
# any Python check; only calls the kernel refuses go on to the checks.
needs_cpp = pytest.mark.skipif("cpp" not in fastdw.backend.usable("cpu"),
                               reason="needs fastdw._C (the cpp backend), which is not built")


def vec(n):
    return torch.rand(n) + 0.5


FULL_CALLS = {  # float32, every per-channel vector given, as models pass them: (args, kwargs)
    "dwconv_bn_act": lambda: (
        (torch.randn(2, 8, 6, 5), torch.randn(8, 1, 3, 3), vec(8), torch.randn(8)),
        {"stride": 2, "act": "hardswish"}),
    "pwconv_bn_act": lambda: (
        (torch.randn(2, 8, 4, 4), torch.randn(6, 8, 1, 1), vec(6), torch.randn(6)),
        {"act": "relu", "residual": torch.randn(2, 6, 4, 4)}),
    "inverted_residual": lambda: (
        (torch.randn(1, 8, 6, 6), torch.randn(16, 8, 1, 1), vec(16), torch.randn(16),
         torch.randn(16, 1, 3, 3), vec(16), torch.randn(16), torch.randn(8, 16), vec(8),
         torch.randn(8)),
        {"se_w1": torch.randn(4, 16), "se_b1": torch.randn(4),
         "se_w2": torch.randn(16, 4, 1, 1), "se_b2": torch.randn(16)}),
    # residual=True where it cannot be added (stride 2): the op drops it
    "inverted_residual s2": lambda: (
        (torch.randn(1, 8, 6, 6), None, None, None, torch.randn(8, 1, 5, 5), vec(8),
         torch.randn(8), torch.randn(8, 8), vec(8), torch.randn(8)),
        {"stride": 2, "act": "relu", "residual": True}),
}


@pytest.fixture
def tried(monkeypatch):
    """The (op name, accepted) of every try_cpp call."""
    from fastdw.ops import dispatch
    calls, real = [], dispatch.try_cpp

    def spy(name, x, *args):
        out = real(name, x, *args)
        calls.append((name, out is not None))
        return out

    monkeypatch.setattr(dispatch, "try_cpp", spy)
    return calls


def checks_off(monkeypatch):
    from fastdw.ops import checks

    def fail(*args, **kwargs):
        raise AssertionError("the Python checks ran")

    monkeypatch.setattr(checks, "feature_map", fail)


@needs_cpp
@pytest.mark.parametrize("case", FULL_CALLS)
def test_common_calls_run_the_kernel_before_the_python_checks(case, tried, monkeypatch):
    from fastdw.ops import dispatch
    name = case.split()[0]
    args, kwargs = FULL_CALLS[case]()
    with torch.no_grad():
        with monkeypatch.context() as m:
            m.setattr(dispatch, "cpp_direct", lambda *args, **kwargs: False)
            checked = getattr(ops, name)(*args, backend="cpp", **kwargs)
        assert tried == []
        checks_off(monkeypatch)
        # Nor any tensor ==: `None in (tensors)` costs ~10 us per tensor (Tensor.__eq__(None)).
        monkeypatch.setattr(torch.Tensor, "__eq__", lambda *a: pytest.fail("a tensor =="))
        first = getattr(ops, name)(*args, backend="cpp", **kwargs)
    assert tried == [(name, True)]
    torch.testing.assert_close(first, checked, rtol=0, atol=0)


@needs_cpp
@pytest.mark.parametrize("name", ["dwconv_bn_act", "pwconv_bn_act", "inverted_residual"])
def test_calls_the_kernel_refuses_go_on_to_the_checks(name, tried):
    args, kwargs = FULL_CALLS[name]()
    with torch.no_grad(), pytest.raises(ValueError, match="act must be one of"):
        getattr(ops, name)(*args, backend="cpp", **{**kwargs, "act": "gelu"})
    assert tried == [(name, False)]


@needs_cpp
@pytest.mark.parametrize("condition", ["reference", "float64", "float64 scale", "grad", "mode",
                                       "autocast"])
def test_no_kernel_first_where_the_op_must_do_more(condition, tried):
    args, kwargs = FULL_CALLS["dwconv_bn_act"]()
    x, w, scale, shift = args
    backend = "reference" if condition == "reference" else "cpp"
    if condition == "float64":
        x, w, scale, shift = (t.double() for t in args)
    if condition == "float64 scale":  # the op casts it (the kernel would refuse it)
        scale = scale.double()
    w.requires_grad_(condition == "grad")
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.enable_grad() if condition == "grad" else torch.no_grad())
        if condition == "mode":
            stack.enter_context(SeenOps())
        if condition == "autocast":
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        ops.dwconv_bn_act(x, w, scale, shift, backend=backend, **kwargs)
    assert tried == []


class _TensorSubclass(torch.Tensor):
    pass


TENSOR_KINDS = {  # every kind of entry the direct route's tensor test tells apart
    "None": lambda: None,
    "float32": lambda: torch.randn(3),
    "float32 parameter": lambda: nn.Parameter(torch.randn(3), requires_grad=False),
    "float32 requiring grad": lambda: torch.randn(3, requires_grad=True),
    "parameter requiring grad": lambda: nn.Parameter(torch.randn(3)),
    "float64": lambda: torch.randn(3, dtype=torch.float64),
    "bfloat16": lambda: torch.randn(3).bfloat16(),
    "subclass": lambda: torch.randn(3).as_subclass(_TensorSubclass),
}


@needs_cpp
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("kind", TENSOR_KINDS)
@pytest.mark.parametrize("container", [tuple, list])
def test_the_c_tensor_test_answers_as_its_python_specification(kind, grad, container):
    """csrc/direct_call.cpp (the cpp backend's plain_float32) against
    dispatch.plain_and_grad_free, for the entry alone, after and before others."""
    from fastdw.ops import dispatch
    c_version = fastdw.backend.module("cpp").plain_float32
    entry = TENSOR_KINDS[kind]()
    plain = kind in ("None", "float32", "float32 parameter") or (not grad
                                                                 and "requiring grad" in kind)
    with torch.set_grad_enabled(grad):
        for tensors in ((entry,), (torch.randn(2), entry), (entry, None)):
            assert dispatch.plain_and_grad_free(tensors, torch.float32) is plain
            assert c_version(container(tensors), dispatch.PLAIN_TYPES, grad) is plain


@needs_cpp
@pytest.mark.parametrize("entry", [3, [torch.randn(3)], "x"])
def test_the_c_tensor_test_refuses_entries_that_are_not_tensors(entry):
    from fastdw.ops import dispatch
    c_version = fastdw.backend.module("cpp").plain_float32
    assert c_version((torch.randn(2), entry), dispatch.PLAIN_TYPES, False) is False


@needs_cpp
def test_the_c_tensor_test_refuses_bad_arguments():
    from fastdw.ops import dispatch
    c_version = fastdw.backend.module("cpp").plain_float32
    with pytest.raises(TypeError, match="plain_types: set"):
        c_version((torch.randn(2),), list(dispatch.PLAIN_TYPES), False)
    with pytest.raises(TypeError, match="tuple or list"):
        c_version(None, dispatch.PLAIN_TYPES, False)


@needs_cpp
def test_the_c_tensor_test_survives_a_list_changed_under_it():
    """The set lookup may run Python code (a metaclass __hash__) that empties the list being
    read: the C version reads its own tuple of the entries."""
    from fastdw.ops import dispatch
    entries = []

    class EmptiesTheList(torch._C._TensorMeta):
        def __hash__(cls):
            entries.clear()
            return 12345

    class Evil(torch.Tensor, metaclass=EmptiesTheList):
        pass

    entries[:] = [torch.ones(2).as_subclass(Evil)] + [torch.ones(2)] * 1000
    c_version = fastdw.backend.module("cpp").plain_float32
    assert c_version(entries, frozenset((Evil, torch.Tensor)), False) is True


def test_a_stale_extension_without_the_c_tensor_test_falls_back(monkeypatch, tried):
    """A fastdw._C built before csrc/direct_call.cpp (an editable install updated without a
    rebuild) has no plain_float32: the Python specification answers instead."""
    cpp = fastdw.backend.module("cpp")
    if cpp is None:
        pytest.skip("needs fastdw._C (the cpp backend), which is not built")
    monkeypatch.setattr(cpp, "plain_float32", None)
    args, kwargs = FULL_CALLS["dwconv_bn_act"]()
    with torch.no_grad():
        out = ops.dwconv_bn_act(*args, backend="cpp", **kwargs)
    assert tried == [("dwconv_bn_act", True)]
    torch.testing.assert_close(out, ops.dwconv_bn_act(*args, backend="reference", **kwargs))


@pytest.mark.parametrize("name", ["dwconv_bn_act", "inverted_residual"])
def test_a_bound_op_sees_requires_grad_set_after_binding(name, backend_name):
    """A parameter unfrozen after its op was bound (fine-tuning) gets its gradient: the
    direct route, which records no autograd, is taken only while nothing requires grad."""
    c = 8
    weight = nn.Parameter(torch.randn(c, 1, 3, 3), requires_grad=False)
    scale, shift = vec(c), torch.randn(c)
    if name == "dwconv_bn_act":
        bound = ops.bind(name, (weight, scale, shift), {"act": "relu6"}, c)
        public = lambda x, w: ops.dwconv_bn_act(x, w, scale, shift, act="relu6")
    else:
        block = ops.BlockWeights(None, None, None, weight, scale, shift, torch.randn(c, c),
                                 vec(c), torch.randn(c), None, None, None, None)
        bound = ops.bind(name, (block,), {}, c)
        def public(x, w):  # in x's dtype, float64
            return ops.inverted_residual(x, *(t if t is None or t is w else t.to(x.dtype)
                                              for t in block._replace(dw_w=w)[:9]))
    x = torch.randn(1, c, 5, 5)
    with fastdw.use_backend(backend_name):
        with torch.no_grad():
            bound(x)  # the direct route, while nothing requires grad
        weight.requires_grad_(True)
        bound(x).square().sum().backward()
    expected_w = weight.detach().double().requires_grad_(True)
    with fastdw.use_backend("reference"):
        public(x.double(), expected_w).square().sum().backward()
    assert weight.grad is not None
    torch.testing.assert_close(weight.grad.double(), expected_w.grad, rtol=1e-4, atol=1e-4)


# Not triton: its launchers take raw pointers, which vmap's batched tensors do not have (the
# ops have no batching rule of their own yet).
@pytest.mark.parametrize("backend", [n for n in ("reference", "cpp")
                                     if n in fastdw.backend.usable("cpu")])
@pytest.mark.parametrize("name", CALLS)
def test_vmap_over_an_op_equals_a_loop(name, backend):
    # inverted_residual's C++ kernel takes the block as one Tensor?[] list, which vmap's
    # generic batching cannot split: under vmap it runs on reference.
    args, kwargs = FULL_CALLS[name]()
    xs = torch.stack([args[0], torch.randn_like(args[0])])
    with fastdw.use_backend(backend):
        batched = torch.func.vmap(lambda x: getattr(ops, name)(x, *args[1:], **kwargs))(xs)
        looped = torch.stack([getattr(ops, name)(x, *args[1:], **kwargs) for x in xs])
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)


def test_lazily_negated_block_weights_are_resolved(backend_name):
    # The dispatcher resolves neg views of plain Tensor arguments but not inside a list.
    args, kwargs = FULL_CALLS["inverted_residual"]()
    project_w = args[7]
    negated = torch.complex(torch.zeros_like(project_w), -project_w).conj().imag
    assert negated.is_neg() and torch.equal(negated, project_w)
    with torch.no_grad(), fastdw.use_backend(backend_name):
        out = ops.inverted_residual(*args[:7], negated, *args[8:], **kwargs)
        want = ops.inverted_residual(*args, **kwargs)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
