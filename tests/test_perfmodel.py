"""fastdw.perfmodel: hand-computed layer costs, orderings, layer counts and the issue-3 target.

All figures are modelled (no GPU exists here); these tests check the model's arithmetic and that
it reads the real network definitions.
"""
import importlib.util
import pathlib

import pytest
import torch
import torchvision
from torch import nn

from fastdw import perfmodel

ROOT = pathlib.Path(__file__).resolve().parents[1]
IR_MODELS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")


@pytest.fixture(scope="module")
def reports():
    """Every model at batch 32, 224x224, fp16 (the issue's configuration)."""
    return {name: perfmodel.model(name, 32, 224, "fp16") for name in perfmodel.MODELS}


def _layer(report, name):
    return next(i for i, layer in enumerate(report.trace.layers) if layer.name == name)


@pytest.mark.parametrize("dtype, itemsize", [("fp16", 2), ("fp32", 4)])
def test_depthwise_layer_by_formula(dtype, itemsize):
    # MobileNetV2 features.1: depthwise 3x3, stride 1, 32 channels at 112x112, BN, ReLU6, then
    # a 1x1 projection 32->16 with BN; fused by fastdw into one kernel.
    n = 2
    r = perfmodel.model("mobilenet_v2", n, 224, dtype)
    dw = _layer(r, "features.1.conv.0.0")
    pw = _layer(r, "features.1.conv.1")
    elems = n * 32 * 112 * 112           # the dw input and output have the same size
    weights = 32 * 3 * 3
    assert r.trace.layers[dw].flops == elems * (2 * 9 + 2 + 2)  # conv, BN FMA, relu6 max+min
    # (a) conv reads x + w, writes; BN reads + 4 statistics, writes; relu6 reads, writes.
    assert r.layer_bytes["eager"][dw] == (6 * elems + weights + 4 * 32) * itemsize
    # (b) one pass: x, weights, folded scale+shift, output.
    assert r.layer_bytes["folded"][dw] == (2 * elems + weights + 2 * 32) * itemsize
    # (c) the block's kernel reads x here; the hidden tensor never leaves the chip...
    assert r.layer_bytes["fastdw"][dw] == (elems + weights + 2 * 32) * itemsize
    # ...and the projection only adds its weights and the block output y.
    assert r.layer_bytes["fastdw"][pw] == (16 * 32 + 2 * 16 + n * 16 * 112 * 112) * itemsize


def test_squeeze_excite_block_by_formula():
    # MobileNetV3-small features.1: dw 3x3 s2 16 ch (112 -> 56), SE 16->8->16, project 16->16.
    # Issue 3's design: hidden is written once and read once, the SE sums are fp32.
    n, s = 2, 2
    r = perfmodel.model("mobilenet_v3_small", n, 224, "fp16")
    indices = dict(r.blocks())["features.1"]
    x, hidden, y = n * 16 * 112 * 112, n * 16 * 56 * 56, n * 16 * 56 * 56
    dw_params, fc_params, pw_params = 16 * 9 + 2 * 16, (8 * 16 + 8) + (16 * 8 + 16), 16 * 16 + 2 * 16
    expand_dw = (x + dw_params + hidden) * s + n * 16 * 4
    gate = n * 16 * 4 + (fc_params + n * 16) * s
    project = (hidden + n * 16 + pw_params + y) * s
    assert sum(r.layer_bytes["fastdw"][i] for i in indices) == expand_dw + gate + project
    assert r.block_kernels["fastdw"]["features.1"] == 3


def test_roofline_time_of_one_kernel():
    gpu = perfmodel.H100_SXM
    memory_bound = perfmodel.Kernel({0: 3.35e6}, tensor_flops=1e6, cuda_flops=1e6)
    assert memory_bound.time(gpu, "fp16") == pytest.approx(1e-6)
    # 67 MFLOP on CUDA cores (67 TFLOP/s) plus 989 MFLOP on fp16 tensor cores: 2 us > 1 us of DRAM.
    compute_bound = perfmodel.Kernel({0: 3.35e6}, tensor_flops=989e6, cuda_flops=67e6)
    assert compute_bound.time(gpu, "fp16") == pytest.approx(2e-6)
    # fp32 convs run on CUDA cores at 67 TFLOP/s, not on the fp16 tensor cores.
    assert compute_bound.time(gpu, "fp32") == pytest.approx(989e6 / 67e12 + 1e-6)


@pytest.mark.parametrize("name", IR_MODELS)
def test_fused_moves_less_than_folded_less_than_eager_in_every_block(reports, name):
    r = reports[name]
    fused = r.fused_blocks()
    assert fused
    for block, indices in r.blocks():
        b = {k: sum(r.layer_bytes[k][i] for i in indices) for k in perfmodel.STRATEGIES}
        t = {k: r.block_time[k][block] for k in perfmodel.STRATEGIES}
        if block in fused:
            assert b["fastdw"] < b["folded"] < b["eager"], block
            assert t["fastdw"] < t["folded"] < t["eager"], block
        else:  # a layer fastdw runs with its per-layer ops, exactly like (b)
            assert b["fastdw"] == b["folded"] <= b["eager"], block


def test_mobilenet_v1_has_nothing_to_fuse_beyond_folding(reports):
    # V1's pointwise convs end in ReLU6, which the inverted_residual op (project without act)
    # cannot express, so fastdw runs V1 layer by layer: (c) == (b), still below eager.
    r = reports["mobilenet_v1"]
    assert r.fused_blocks() == []
    assert r.total_bytes("fastdw") == r.total_bytes("folded") < r.total_bytes("eager")


def _module_count(model, *types):
    return sum(isinstance(m, types) for m in model.modules())


@pytest.mark.parametrize("name, fused, se, residual", [
    ("mobilenet_v1", 0, 0, 0),
    ("mobilenet_v2", 17, 0, 10),
    ("mobilenet_v3_large", 15, 8, 10),
    ("mobilenet_v3_small", 11, 9, 6),
])
def test_layer_counts(reports, name, fused, se, residual):
    r = reports[name]
    model = perfmodel.build_model(name)
    ops = r.trace.ops
    # Every Conv2d / Linear / BatchNorm2d of the definition ran once and was recorded.
    assert sum(op.kind == "conv" for op in ops) == _module_count(model, nn.Conv2d)
    assert sum(op.kind == "linear" for op in ops) == _module_count(model, nn.Linear)
    assert sum(op.kind == "bn" for op in ops) == _module_count(model, nn.BatchNorm2d)
    assert len(r.fused_blocks()) == fused
    assert sum(op.kind == "mul" for op in ops) == se
    assert sum(layer.role.endswith("+res") for layer in r.trace.layers) == residual
    # (b) is one pass per conv/linear plus the lone SE pool and gate ops and the global pool.
    assert r.total_kernels("folded") == (_module_count(model, nn.Conv2d, nn.Linear) + 2 * se + 1)
    # (c): fused blocks are 1 kernel, or 3 with SE; the rest (stem, head, classifier) as in (b).
    others = sum(r.block_kernels["folded"][b] for b, _ in r.blocks() if b not in r.fused_blocks())
    assert r.total_kernels("fastdw") == fused + 2 * se + others


def test_mobilenet_v2_eager_kernel_count(reports):
    # 52 convs + 52 BN + 35 ReLU6 + 10 residual adds + the global mean + the classifier.
    assert reports["mobilenet_v2"].total_kernels("eager") == 52 + 52 + 35 + 10 + 1 + 1


@pytest.mark.parametrize("name", IR_MODELS)
def test_fastdw_models_have_the_traced_layers(name):
    # The model traces torchvision's definition; fastdw.models must build the same convolutions.
    import fastdw.models

    def convs(builder):
        with torch.device("meta"):
            model = builder()
        return [(q, tuple(m.weight.shape), m.stride, m.groups)
                for q, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs(getattr(fastdw.models, name)) == convs(getattr(torchvision.models, name))


def test_mobilenet_v2_batch32_fp16_meets_the_issue_target(reports):
    r = reports["mobilenet_v2"]
    fastdw = r.total_bytes("fastdw")
    assert r.total_bytes("folded") / fastdw >= 5.0
    assert r.total_bytes("eager") / fastdw >= 12.0


def test_flops_do_not_depend_on_fusion_and_match_the_known_total(reports):
    # MobileNetV2 is ~300 M multiply-adds per 224x224 image: ~0.6 GFLOP, and V1 ~569 M MACs.
    assert reports["mobilenet_v2"].total_flops / 32 == pytest.approx(0.63e9, rel=0.03)
    assert reports["mobilenet_v1"].total_flops / 32 == pytest.approx(1.16e9, rel=0.03)
    for r in reports.values():
        for strategy in perfmodel.STRATEGIES:
            ks = [k for _, block in perfmodel.kernels(r.trace, strategy, "fp16") for k in block]
            assert sum(k.tensor_flops + k.cuda_flops for k in ks) == r.total_flops


def test_bytes_scale_with_itemsize_without_squeeze_excite():
    # MobileNetV2 has no fp32 SE sums, so every byte doubles from fp16 to fp32.
    tr = perfmodel.trace("mobilenet_v2", 4, 128)
    half, single = perfmodel.report(tr, "fp16"), perfmodel.report(tr, "fp32")
    for strategy in perfmodel.STRATEGIES:
        assert single.total_bytes(strategy) == 2 * half.total_bytes(strategy)


def _toy(forward):
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            return forward(self, x)

    with torch.device("meta"):
        return Toy().eval()


def test_epilogue_fuses_only_an_output_nobody_else_reads():
    # bn(c) + c: the conv output has two readers, so neither BN nor the add can be its epilogue.
    toy = _toy(lambda m, x: (lambda c: m.bn(c) + c)(m.conv(x)))
    tr = perfmodel.trace_module(toy, "toy", 1, 8, 4)
    assert [layer.role for layer in tr.layers] == ["conv", "bn", "add"]
    # bn(conv(x)) + conv(x): the add joins the second conv, the one that runs after both operands
    # exist, never the first (its epilogue would read a tensor not computed yet).
    tr = perfmodel.trace_module(_toy(lambda m, x: m.bn(m.conv(x)) + m.conv(x)), "toy", 1, 8, 4)
    assert [layer.role for layer in tr.layers] == ["conv", "conv+res"]
    tr = perfmodel.trace_module(_toy(lambda m, x: torch.relu(m.bn(m.conv(x)))), "toy", 1, 8, 4)
    assert [layer.role for layer in tr.layers] == ["conv+act"]
    assert tr.layers[0].folded_params == 8 * 4 * 9 + 2 * 8


def test_an_op_without_a_cost_is_an_error_not_a_silent_zero():
    toy = _toy(lambda m, x: torch.sigmoid(m.conv(x)))
    with pytest.raises(NotImplementedError, match="aten.sigmoid"):
        perfmodel.trace_module(toy, "toy", 1, 8, 4)


def test_unknown_model_and_dtype_are_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        perfmodel.model("resnet50")
    with pytest.raises(ValueError, match="dtype"):
        perfmodel.model("mobilenet_v3_small", 1, 64, "fp8")


def test_bench_script_labels_figures_and_writes_the_png(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("perf_model", ROOT / "bench" / "perf_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    png = tmp_path / "v2.png"
    script.main(["--model", "mobilenet_v2", "--batch", "32", "--dtype", "fp16", "--png", str(png)])
    out = capsys.readouterr().out
    assert out.startswith("MODELLED, not measured")
    assert "TOTAL (modelled)" in out and "target" in out and ": met (modelled)" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
