"""A fastdw model where PyTorch's tools and edge cases meet it: an empty batch (against
torchvision's MobileNetV2 holding the same weights, run in float64), the TorchScript ONNX
exporter (the exported model run by onnx's reference evaluator), torch.fx (the traced
GraphModule), torch.jit.trace (the traced module) and torch.export (the exported program),
each against the model in float64."""
import io

import onnx
import onnx.reference
import pytest
import torch
import torchvision

import fastdw.models
import numerics


@pytest.fixture
def pair(randomize_bn):
    """(fastdw mobilenet_v2, torchvision mobilenet_v2 with the same weights, in float64)."""
    ours = randomize_bn(fastdw.models.mobilenet_v2())
    stock = torchvision.models.mobilenet_v2()
    stock.load_state_dict(ours.state_dict())
    return ours, stock.double()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_empty_batch_gives_empty_logits_and_gradients(pair, mode):
    ours, stock = (getattr(m, mode)() for m in pair)
    x = torch.randn(0, 3, 64, 64)
    with torch.no_grad():  # eval: the eval program's route
        assert ours(x).shape == (0, 1000)
    x_ours, x_stock = x.clone().requires_grad_(), x.double().requires_grad_()
    out, ref = ours(x_ours), stock(x_stock)
    assert out.shape == ref.shape == (0, 1000)
    out.sum().backward()
    ref.sum().backward()
    assert x_ours.grad.shape == x.shape
    for (name, p), q in zip(ours.named_parameters(), stock.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad.float(), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_torchscript_onnx_export_runs_as_the_model(randomize_bn, accurate, mode):
    # The exporter exports the eval forward (training=EVAL, its default) in either mode.
    model = getattr(randomize_bn(fastdw.models.mobilenet_v2()), mode)()
    x = torch.randn(1, 3, 32, 32)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False)
    exported = onnx.load_from_string(buffer.getvalue())
    assert {o.domain for o in exported.opset_import} == {""}  # standard ONNX ops only
    out, = onnx.reference.ReferenceEvaluator(exported).run(
        None, {exported.graph.input[0].name: x.numpy()})
    assert model.training == (mode == "train")
    assert accurate(torch.from_numpy(out), model.eval(), x)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_fx_symbolic_trace_runs_as_the_model(randomize_bn, accurate, mode):
    # dropout 0: a train-mode forward is then deterministic
    model = getattr(randomize_bn(fastdw.models.mobilenet_v2(dropout=0.0)), mode)()
    traced = torch.fx.symbolic_trace(model)
    # the fused modules are leaves, as torch.nn's own layers are
    assert "call_module" in {n.op for n in traced.graph.nodes}
    x = torch.randn(2, 3, 64, 64)
    assert accurate(traced(x), model, x)


def test_jit_trace_of_the_classifier_runs_as_it(randomize_bn):
    # torch.jit.trace checks its trace against a second one made under no_grad, where
    # fastdw.nn.Linear may take its C++ GEMM: the two must record the same graph.
    classifier = randomize_bn(fastdw.models.mobilenet_v2()).classifier.eval()
    features = torch.randn(2, 1280)
    out = torch.jit.trace(classifier, (features,))(features)
    with torch.no_grad():
        ref = classifier.double()(features.double())
    numerics.assert_close(out, ref, torch.float32)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_jit_trace_runs_as_the_model(randomize_bn, accurate, mode):
    model = getattr(randomize_bn(fastdw.models.mobilenet_v2(dropout=0.0)), mode)()
    x = torch.randn(2, 3, 64, 64)
    traced = torch.jit.trace(model, (x,))
    assert accurate(traced(x), model, x)


def test_export_after_a_no_grad_run_runs_as_the_model(randomize_bn, accurate):
    model = randomize_bn(fastdw.models.mobilenet_v2()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # fills the fold caches and the eval program's entry
        model(x)
        model(x)
    exported = torch.export.export(model, (x,))
    assert accurate(exported.module()(x), model, x)
