"""The kill switch (fastdw/backend.py): ops named in FASTDW_DISABLE_OPS or by set_disabled_ops()
run on stock PyTorch (the reference backend) whatever backend a call asks for, in the public
ops, the fused modules and the models' eval program; frozen models refuse to run."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import fastdw
from fastdw import backend, ops
from fastdw.contract import OP_NAMES
from fastdw.kernels import reference


@pytest.fixture(autouse=True)
def _switch_off_afterwards():
    yield
    fastdw.set_disabled_ops(None)


@pytest.fixture
def reference_calls(monkeypatch):
    """The names of the reference kernels called, in order."""
    calls = []
    for name in OP_NAMES:
        def spy(*args, _name=name, _real=getattr(reference, name)):
            calls.append(_name)
            return _real(*args)
        monkeypatch.setattr(reference, name, spy)
    return calls


def vec(n):
    return torch.rand(n) + 0.5


CALLS = {  # op name -> a call on fresh float32 inputs, on the backend given
    "dwconv_bn_act": lambda b: ops.dwconv_bn_act(
        torch.randn(2, 8, 6, 5), torch.randn(8, 1, 3, 3), vec(8), torch.randn(8), backend=b),
    "pwconv_bn_act": lambda b: ops.pwconv_bn_act(
        torch.randn(2, 8, 4, 4), torch.randn(6, 8, 1, 1), vec(6), torch.randn(6), backend=b),
    "inverted_residual": lambda b: ops.inverted_residual(
        torch.randn(1, 8, 6, 6), torch.randn(16, 8, 1, 1), vec(16), torch.randn(16),
        torch.randn(16, 1, 3, 3), vec(16), torch.randn(16), torch.randn(8, 16, 1, 1), vec(8),
        torch.randn(8), backend=b),
}


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("name", OP_NAMES)
def test_a_disabled_op_runs_on_stock_pytorch(name, grad, backend_name, reference_calls):
    fastdw.set_disabled_ops([name])
    assert fastdw.disabled_ops() == {name}
    with torch.set_grad_enabled(grad):
        CALLS[name](backend_name)
    assert reference_calls == [name]
    for other in set(OP_NAMES) - {name}:  # the others keep their backend
        reference_calls.clear()
        CALLS[other](backend_name)
        assert reference_calls == ([other] if backend_name == "reference" else [])


def test_the_switch_overrides_every_way_of_choosing_a_backend(reference_calls):
    fastdw.set_disabled_ops(["dwconv_bn_act"])
    for name in backend.usable("cpu"):
        assert backend.resolve(name, "cpu", "dwconv_bn_act") == "reference"
        with fastdw.use_backend(name):
            assert backend.resolve(None, "cpu", "dwconv_bn_act") == "reference"
    with pytest.raises(ValueError, match="unknown backend 'warp'"):
        backend.resolve("warp", "cpu", "dwconv_bn_act")


def test_fused_modules_follow_the_switch(reference_calls, randomize_bn):
    conv, bn = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), randomize_bn(nn.BatchNorm2d(8))
    layer = fastdw.nn.DWConvBNAct.wrap(conv, bn, "relu6").eval()
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        fused = layer(x)
        assert reference_calls == ([] if "cpp" in backend.usable("cpu") else ["dwconv_bn_act"])
        reference_calls.clear()
        fastdw.set_disabled_ops(["dwconv_bn_act"])
        assert torch.equal(layer(x), reference.dwconv_bn_act(
            x, conv.weight, *ops.fold_bn(bn), 1, 1, 1, "relu6"))
    assert reference_calls == ["dwconv_bn_act", "dwconv_bn_act"]
    torch.testing.assert_close(fused, layer(x))


@pytest.mark.skipif("cpp" not in backend.usable("cpu"),
                    reason="needs fastdw._C (the cpp backend), which is not built")
def test_models_leave_their_eval_program_and_frozen_models_refuse(reference_calls,
                                                                   randomize_bn, accurate):
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    frozen = fastdw.nn.freeze(model)
    with torch.no_grad():
        for _ in range(3):  # the third call runs the eval program (fastdw.models.eval_program)
            model(x)
        assert reference_calls == []
        fastdw.set_disabled_ops(["inverted_residual"])
        out = model(x)
    assert reference_calls.count("inverted_residual") == 11  # V3-small's blocks with expansion
    assert set(reference_calls) == {"inverted_residual"}
    assert accurate(out, model, x)
    with pytest.raises(RuntimeError, match=r"kill switch disables \['inverted_residual'\]"):
        frozen(x)
    with pytest.raises(RuntimeError, match="call the model itself"):
        fastdw.nn.freeze(model)
    fastdw.set_disabled_ops([])
    torch.testing.assert_close(frozen(x), out)


def test_compiled_calls_follow_a_change_of_the_switch(reference_calls):
    x, w, scale, shift = torch.randn(1, 8, 5, 5), torch.randn(8, 1, 3, 3), vec(8), torch.randn(8)
    compiled = torch.compile(lambda x: ops.dwconv_bn_act(x, w, scale, shift), fullgraph=True)
    first = compiled(x)
    calls_before = len(reference_calls)
    fastdw.set_disabled_ops(["dwconv_bn_act"])
    torch.testing.assert_close(compiled(x), first)
    assert len(reference_calls) == calls_before + 1


class DepthwiseThenPointwise(nn.Module):
    """Two ops, recorded with the backend they resolved to when exported or traced."""

    def __init__(self):
        super().__init__()
        self.dw_w, self.pw_w = torch.randn(8, 1, 3, 3), torch.randn(6, 8, 1, 1)
        self.scale, self.shift = vec(8), torch.randn(8)

    def forward(self, x):
        y = ops.dwconv_bn_act(x, self.dw_w, self.scale, self.shift, backend="cpp")
        return ops.pwconv_bn_act(y, self.pw_w, None, None, act="relu6", backend="cpp")


@pytest.mark.parametrize("record", ["torch.export", "jit.trace"])
def test_recorded_calls_follow_the_switch_and_take_empty_batches(record, reference_calls):
    # Exported programs and traces call torch.ops.fastdw.* with backend="cpp" baked in; the
    # switch, flipped after recording, and an empty batch still send them to reference.
    net, x = DepthwiseThenPointwise(), torch.randn(2, 8, 6, 5)
    if record == "torch.export":
        batch = torch.export.Dim("batch", min=0)
        recorded = torch.export.export(net, (x,), dynamic_shapes=({0: batch},)).module()
    else:
        recorded = torch.jit.trace(net, (x,))
    reference_calls.clear()  # export's fake tensors may have run the ops' decompositions
    expected = recorded(x)
    assert reference_calls == []
    torch.testing.assert_close(expected, net(x))
    fastdw.set_disabled_ops(["pwconv_bn_act"])
    torch.testing.assert_close(recorded(x), expected)
    assert reference_calls == ["pwconv_bn_act"]
    fastdw.set_disabled_ops([])
    reference_calls.clear()
    empty = recorded(x[:0])
    assert empty.shape == (0, 6, 6, 5)
    assert reference_calls == ["dwconv_bn_act", "pwconv_bn_act"]


def test_a_call_of_the_custom_op_itself_follows_the_switch(reference_calls):
    x, w, scale, shift = torch.randn(1, 8, 5, 5), torch.randn(8, 1, 3, 3), vec(8), torch.randn(8)
    fastdw.set_disabled_ops(["dwconv_bn_act"])
    torch.ops.fastdw.dwconv_bn_act(x, w, scale, shift, 1, 1, 1, "relu6", "cpp")
    assert reference_calls == ["dwconv_bn_act"]


@pytest.mark.parametrize("bad, message", [
    (["dwconv"], r"set_disabled_ops: unknown op name\(s\) \['dwconv'\]"),
    ("dwconv_bn_act", "an iterable of op names"),
    ([1, "dwconv_bn_act"], r"set_disabled_ops: op names are str, got 1 \(int\)"),
    ([["dwconv_bn_act"]], r"op names are str, got \['dwconv_bn_act'\] \(list\)"),
    (b"dwconv_bn_act", r"op names are str, got 100 \(int\)"),
])
def test_bad_names_are_refused(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        fastdw.set_disabled_ops(bad)
    assert fastdw.disabled_ops() == frozenset()


def _run(code, value):
    env = {**os.environ, "FASTDW_DISABLE_OPS": value}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_environment_variable_is_read_at_import_and_shown_by_info():
    done = _run("import fastdw; print(sorted(fastdw.disabled_ops())); fastdw.set_disabled_ops([]);"
                " fastdw.set_disabled_ops(None); print(fastdw.format_info())",
                " pwconv_bn_act, dwconv_bn_act ")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "['dwconv_bn_act', 'pwconv_bn_act']"
    assert ("disabled ops, run on reference (FASTDW_DISABLE_OPS / set_disabled_ops): "
            "dwconv_bn_act, pwconv_bn_act") in done.stdout
    typo = _run("import fastdw", "dwconv_bn_act,inverted_residaul")
    assert typo.returncode != 0
    assert "FASTDW_DISABLE_OPS: unknown op name(s) ['inverted_residaul']" in typo.stderr


def test_the_op_names_are_the_public_ops():
    from fastdw.ops import _ROUTES
    assert set(_ROUTES) == set(OP_NAMES)
    assert all(callable(getattr(ops, name)) for name in OP_NAMES)
