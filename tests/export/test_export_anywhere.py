"""fastdw models, and a small net of every fastdw op, leave PyTorch for a deployment format
and still compute what they do: torch.export (every model), the program lowered to plain ATen by
fastdw.ops.decompositions() and compiled by AOTInductor, the default (dynamo) ONNX exporter run
in ONNX Runtime, and torch.jit.trace. Each output is checked on a fresh input, not the one the
export traced, against a float64 run of the model (the `accurate` fixture of tests/conftest.py).
AOTInductor compiles C++, so it gets the small net alone (about a minute on 2 cores)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastdw.models
import fastdw.nn

MODELS = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]
FASTDW_OPS = {"dwconv_bn_act", "pwconv_bn_act", "inverted_residual"}


def fastdw_ops(program):
    """The names of the fastdw ops an exported program calls."""
    return {n.target.name().removeprefix("fastdw::") for n in program.graph.nodes
            if n.op == "call_function" and getattr(n.target, "namespace", None) == "fastdw"}


@pytest.mark.parametrize("name", MODELS)
def test_exported_program_runs_as_the_model(randomize_bn, accurate, name):
    model = randomize_bn(getattr(fastdw.models, name)()).eval()
    exported = torch.export.export(model, (torch.randn(2, 3, 64, 64),))
    # One fastdw op per fused layer or block: the export did not fall back to stock layers.
    uses = fastdw_ops(exported)
    assert uses and uses <= FASTDW_OPS
    x = torch.randn(2, 3, 64, 64)
    assert accurate(exported.module()(x), model, x)


def test_exported_program_takes_batch_and_image_size_as_dynamic_dims(randomize_bn, accurate):
    """Dynamic batch and spatial size, with the lower bound torchvision's own MobileNets need
    too (below 33 pixels a stride-2 stage reaches 1x1 and export specialises on it)."""
    model = randomize_bn(fastdw.models.mobilenet_v2()).eval()
    dims = {0: torch.export.Dim("n", max=64), 2: torch.export.Dim("h", min=33, max=512),
            3: torch.export.Dim("w", min=33, max=512)}
    exported = torch.export.export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes=(dims,))
    assert fastdw_ops(exported) <= FASTDW_OPS and fastdw_ops(exported)
    x = torch.randn(3, 3, 71, 96)
    assert accurate(exported.module()(x), model, x)


def small_net(randomize_bn):
    """All three fastdw ops and four activations (squeeze-excite: ReLU, hardsigmoid), in a net
    that AOTInductor compiles in seconds."""
    net = torch.nn.Sequential(
        fastdw.nn.DWConvBNAct(8, 3, 1, act="relu6"),
        fastdw.nn.ConvBNAct(8, 16, 1, act="hardswish"),
        fastdw.nn.InvertedResidualV3(16, 3, 48, 16, 1, act="hardswish", squeeze_channels=16))
    return randomize_bn(net).eval()


def test_jit_trace_runs_as_the_net(randomize_bn, accurate):
    # tests/reliability/test_autograd_and_compat.py traces mobilenet_v2, which has no
    # dwconv_bn_act layer and no squeeze-excite; this net has both.
    net = small_net(randomize_bn)
    traced = torch.jit.trace(net, (torch.randn(2, 8, 16, 16),))
    x = torch.randn(2, 8, 16, 16)
    assert accurate(traced(x), net, x)


def test_jit_script_says_what_to_use_instead():
    net = fastdw.models.mobilenet_v3_small().eval()
    with pytest.raises(RuntimeError, match=r"jit\.script cannot compile fastdw's .*jit\.trace"):
        torch.jit.script(net)


# Loads both packages in a process that never imports fastdw: the lowered one must run, the one
# calling fastdw's ops must be refused (their kernels are Python: torch.library.custom_op).
_LOAD_WITHOUT_FASTDW = textwrap.dedent("""
    import sys, torch
    lowered, with_ops, x, out = sys.argv[1:]
    torch.save(torch._inductor.aoti_load_package(lowered)(torch.load(x)), out)
    try:
        torch._inductor.aoti_load_package(with_ops)
    except RuntimeError as e:
        print(e)
    assert not any(name.startswith("fastdw") for name in sys.modules)
""")


def test_aotinductor_packages_run_as_the_net(randomize_bn, accurate, tmp_path, monkeypatch):
    # As CI services set it: inductor then refuses to call a decomposed op it has no lowering for.
    monkeypatch.setenv("CI", "true")
    net = small_net(randomize_bn)
    exported = torch.export.export(net, (torch.randn(2, 8, 16, 16),))
    assert fastdw_ops(exported) == FASTDW_OPS
    # torch's own table leaves the fastdw ops to their kernels; fastdw's lowers them.
    assert fastdw_ops(exported.run_decompositions()) == FASTDW_OPS
    lowered = exported.run_decompositions(fastdw.ops.decompositions())
    assert fastdw_ops(lowered) == set()
    with_ops = torch._inductor.aoti_compile_and_package(
        exported, package_path=str(tmp_path / "with_ops.pt2"))
    plain = torch._inductor.aoti_compile_and_package(
        lowered, package_path=str(tmp_path / "lowered.pt2"))
    x = torch.randn(2, 8, 16, 16)
    assert accurate(torch._inductor.aoti_load_package(with_ops)(x), net, x)
    torch.save(x, tmp_path / "x.pt")
    run = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_FASTDW, plain, with_ops,
                          str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Could not find schema for fastdw::" in run.stdout
    assert accurate(torch.load(tmp_path / "out.pt"), net, x)


# A process of its own, so that no earlier compile has given inductor its fallbacks.
_COMPILE_WHERE_CI_IS_SET = textwrap.dedent("""
    import torch, fastdw.nn
    net = torch.nn.Sequential(
        fastdw.nn.DWConvBNAct(8, 3, 1, act="relu6"),
        fastdw.nn.ConvBNAct(8, 16, 1, act="hardswish"),
        fastdw.nn.InvertedResidualV3(16, 3, 48, 16, 1, act="hardswish", squeeze_channels=16)).eval()
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        assert torch.equal(torch.compile(net)(x), net(x))
""")


def test_torch_compile_calls_the_ops_where_the_environment_sets_ci():
    run = subprocess.run([sys.executable, "-c", _COMPILE_WHERE_CI_IS_SET], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "CI": "true"})
    assert run.returncode == 0, run.stderr


ONNX_SKIP = ("needs {0}: torch.onnx.export's default exporter needs onnxscript, and ONNX Runtime "
             "runs the exported models (pip install -r requirements.txt)")


# mobilenet_v2 through the TorchScript exporter: tests/reliability/test_autograd_and_compat.py.
@pytest.mark.parametrize("name, ops", [
    ("small_net", {"Conv", "Clip", "HardSwish", "Relu", "HardSigmoid", "ReduceMean"}),
    ("mobilenet_v3_small", {"Conv", "Relu", "HardSwish", "HardSigmoid", "ReduceMean"}),
])
def test_default_onnx_export_is_standard_onnx_that_runs_as_the_model(randomize_bn, accurate,
                                                                      name, ops):
    pytest.importorskip("onnxscript", reason=ONNX_SKIP.format("onnxscript"))
    ort = pytest.importorskip("onnxruntime", reason=ONNX_SKIP.format("onnxruntime"))
    if name == "small_net":
        model, shape = small_net(randomize_bn), (2, 8, 16, 16)
    else:
        model, shape = randomize_bn(getattr(fastdw.models, name)()).eval(), (2, 3, 64, 64)
    proto = torch.onnx.export(model, (torch.randn(shape),)).model_proto
    assert {node.domain for node in proto.graph.node} == {""}
    assert not proto.functions  # no custom functions the nodes could stand for
    assert ops <= {node.op_type for node in proto.graph.node}
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = torch.randn(shape)
    out, = session.run(None, {proto.graph.input[0].name: x.numpy()})
    assert accurate(torch.from_numpy(out), model, x)
