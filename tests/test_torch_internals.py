"""fastdw.torch_internals: each private torch API fastdw reads still exists and still answers
what fastdw asks of it. A torch upgrade that moves one fails here, by name."""
import importlib
import subprocess
import sys

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.overrides import TorchFunctionMode

from fastdw import torch_internals as ti


class Passthrough(ti.TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class Functions(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_dispatch_mode_active():
    assert not ti.dispatch_mode_active()
    with Passthrough():
        assert ti.dispatch_mode_active()


def test_function_mode_watching_ignores_device_contexts():
    assert not ti.function_mode_watching()
    with torch.device("cpu"):
        assert not ti.function_mode_watching()
    with Functions():
        assert ti.function_mode_watching()


def test_dual_level_open():
    assert not ti.dual_level_open()
    with fwAD.dual_level():
        assert ti.dual_level_open()


def test_functorch_transforms_active():
    assert not ti.functorch_transforms_active()
    seen = []
    torch.func.vmap(lambda t: seen.append(ti.functorch_transforms_active()) or t)(torch.ones(2))
    assert seen == [True]


def test_global_module_hooks():
    assert not ti.global_module_hooks()
    handle = nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert ti.global_module_hooks()
    finally:
        handle.remove()
    assert not ti.global_module_hooks()


def test_batchnorm_base_covers_every_batchnorm():
    for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm):
        assert issubclass(cls, ti.BatchNormBase)


def test_marked_constant_is_called_at_trace_time_not_traced():
    # A lazy import, as fastdw.backend's availability check does: fullgraph compile cannot trace
    # it, so this passes only if torch.compile takes the marked function's answer as a constant.
    @ti.mark_constant_for_compile
    def constant():
        importlib.import_module("json")
        return 2.0

    compiled = torch.compile(lambda t: t * constant(), fullgraph=True, backend="eager")
    assert torch.equal(compiled(torch.ones(3)), torch.full((3,), 2.0))


def test_registered_decomposition_is_read_by_the_onnx_exporter_not_by_export():
    pytest.importorskip("onnxscript", reason="needs onnxscript, which torch.onnx.export's "
                        "default exporter needs (pip install -r requirements.txt)")

    @torch.library.custom_op("fastdw_test::twice", mutates_args=())
    def twice(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    twice.register_fake(torch.empty_like)
    op = torch.ops.fastdw_test.twice.default
    ti.register_decomposition(op, lambda x: x + x)

    class Twice(nn.Module):
        def forward(self, x):
            return twice(x)

    x = torch.randn(3)
    exported = torch.export.export(Twice().eval(), (x,))
    assert op in {n.target for n in exported.run_decompositions().graph.nodes}
    proto = torch.onnx.export(Twice().eval(), (x,)).model_proto
    assert [n.op_type for n in proto.graph.node] == ["Add"]


# Where the environment sets CI, inductor refuses to call an op the global decomposition table
# decomposes unless it was given a lowering for it; register_decomposition gives it one, whether
# inductor's lowering module loads after fastdw (the finder) or before (at once).
_INDUCTOR_LOWERS_THE_OPS = """
import sys
import torch
{first}
{second}
from fastdw.contract import OP_NAMES
lowering = sys.modules["torch._inductor.lowering"]
missing = [name for name in OP_NAMES
           if getattr(torch.ops.fastdw, name).default not in lowering.lowerings]
assert not missing, missing
"""


_IMPORT_ORDERS = {
    "fastdw first": ("import fastdw.ops", "import torch._inductor.lowering"),
    "inductor first": ("import torch._inductor.lowering", "import fastdw.ops"),
    # A look for the module before it loads must not use up the finder.
    "looked up first": ("import fastdw.ops, importlib.util; "
                        "assert importlib.util.find_spec('torch._inductor.lowering')",
                        "import torch._inductor.lowering"),
}


@pytest.mark.parametrize("order", _IMPORT_ORDERS)
def test_inductor_has_a_lowering_for_each_decomposed_op(order):
    first, second = _IMPORT_ORDERS[order]
    run = subprocess.run([sys.executable, "-c", _INDUCTOR_LOWERS_THE_OPS.format(
        first=first, second=second)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
