"""fastdw.perfmodel: hand-computed layer costs, orderings, layer counts and the issue-3 target.

All figures are modelled (no GPU exists here); these tests check the model's arithmetic and that
it reads the real network definitions.
"""
import dataclasses
import functools
import importlib
import importlib.util
import pathlib
import re

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
    assert r.layer_bytes["design"][dw] == (elems + weights + 2 * 32) * itemsize
    # ...and the projection only adds its weights and the block output y.
    assert r.layer_bytes["design"][pw] == (16 * 32 + 2 * 16 + n * 16 * 112 * 112) * itemsize


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
    assert sum(r.layer_bytes["design"][i] for i in indices) == expand_dw + gate + project
    assert r.block_kernels["design"]["features.1"] == 3


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
            assert b["design"] < b["folded"] < b["eager"], block
            assert t["design"] < t["folded"] < t["eager"], block
            # The committed kernels never beat the design they approximate.
            assert b["triton"] >= b["design"] and t["triton"] > t["design"], block
            assert t["cuda"] > t["design"], block
        else:  # a layer the design runs with its per-layer ops, exactly like (b)
            assert b["design"] == b["folded"] <= b["eager"], block


def test_mobilenet_v1_has_nothing_to_fuse_beyond_folding(reports):
    # V1's pointwise convs end in ReLU6, which the inverted_residual op (project without act)
    # cannot express, so fastdw runs V1 layer by layer: (c) == (b), still below eager.
    r = reports["mobilenet_v1"]
    assert r.fused_blocks() == []
    assert r.total_bytes("design") == r.total_bytes("folded") < r.total_bytes("eager")


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
    assert r.total_kernels("design") == fused + 2 * se + others


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
    fastdw = r.total_bytes("design")
    assert r.total_bytes("folded") / fastdw >= 5.0
    assert r.total_bytes("eager") / fastdw >= 12.0


def test_flops_do_not_depend_on_fusion_and_match_the_known_total(reports):
    # MobileNetV2 is ~300 M multiply-adds per 224x224 image: ~0.6 GFLOP, and V1 ~569 M MACs.
    assert reports["mobilenet_v2"].total_flops / 32 == pytest.approx(0.63e9, rel=0.03)
    assert reports["mobilenet_v1"].total_flops / 32 == pytest.approx(1.16e9, rel=0.03)
    for r in reports.values():
        for strategy in ("eager", "folded", "design"):
            ks = [k for _, block in perfmodel.kernels(r.trace, strategy, "fp16") for k in block]
            assert sum(k.tensor_flops + k.cuda_flops for k in ks) == r.total_flops
        # The committed kernels execute padded tiles and recompute halos: never less.
        for strategy in ("triton", "cuda"):
            assert r.total_executed_flops(strategy) >= r.total_flops


def test_bytes_scale_with_itemsize_without_squeeze_excite():
    # MobileNetV2 has no fp32 SE sums, so every byte of (a)-(c) doubles from fp16 to fp32
    # (the committed kernels' fp32 scales and dtype-chosen tiles do not scale).
    tr = perfmodel.trace("mobilenet_v2", 4, 128)
    half, single = perfmodel.report(tr, "fp16"), perfmodel.report(tr, "fp32")
    for strategy in ("eager", "folded", "design"):
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


def test_the_gpu_readme_shows_the_model_as_committed(reports):
    # bench/gpu/README.md's modelled MobileNetV2 table (block rows and totals) is what the model
    # gives for the committed kernels: regenerate it with bench/perf_model.py when they change.
    from fastdw.bench import modelled
    readme = (ROOT / "bench" / "gpu" / "README.md").read_text().splitlines()
    rows = [line for line in modelled.table(reports["mobilenet_v2"]) if not line.startswith(" ")]
    assert [line for line in rows if line not in readme] == []


def test_bench_script_ablates_each_triton_change(capsys):
    spec = importlib.util.spec_from_file_location("perf_model", ROOT / "bench" / "perf_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--ablate", "--model", "mobilenet_v3_small", "--batch", "1", "2",
                 "--resolution", "64"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("MODELLED, not measured: what each issue-13 change saves")
    assert all(line.endswith(" us") and "(modelled)" in line for line in out[1:3])
    rows = [line.strip("|").split(" | ") for line in out if line.startswith("| ")][1:]
    assert [(r[0].strip(), int(r[1])) for r in rows] == [
        (c, b) for b in (1, 2) for c in perfmodel.TRITON_CHANGES]
    # The stem's channels_last copy costs its input read and written once: 2 x 3 x 64 x 64 x 2.
    stem = [r for r in rows if r[0].strip() == "channels_last"]
    assert [float(r[2]) for r in stem] == pytest.approx(
        [-2 * b * 3 * 64 * 64 * 2 / 1e6 for b in (1, 2)], abs=0.005)
    assert [int(r[4]) for r in stem] == [-1, -1]


# --- (d) triton and (e) cuda: the committed kernels -----------------------------------------

def _ir_module():
    return importlib.import_module("fastdw.kernels.triton.inverted_residual")


@functools.lru_cache(maxsize=None)
def _trace(name, batch, resolution):
    """One trace per configuration for the tests below (none of them changes it)."""
    return perfmodel.trace(name, batch, resolution)


def _small_v2():
    # MobileNetV2 at 32x32, batch 1: features.3 is expand 24->144, dw 3x3 s1 at 8x8, project
    # 144->24 with the residual: one 8x8 output tile.
    tr = _trace("mobilenet_v2", 1, 32)
    return tr, dict(perfmodel._blocks(tr.layers))["features.3"]


def _block_kernels(tr, strategy, block, gpu=perfmodel.H100_SXM, off=()):
    return dict(perfmodel.kernels(tr, strategy, "fp16", gpu, off))[block]


def test_triton_fused_block_by_hand():
    # One SM, so the single tile's fused grid does not leave SMs idle and the block runs fused.
    tr, indices = _small_v2()
    one_sm = dataclasses.replace(perfmodel.H100_SXM, sms=1)
    taps, k = _block_kernels(tr, "triton", "features.3", one_sm)
    assert taps.bytes == 2 * 9 * 144 * 2  # the launcher's tap-major copy of the dw weights
    b = perfmodel.ir_shape(tr, indices)
    assert (b.c_in, b.hidden, b.c_out, b.h, b.oh, b.k, b.stride, b.residual) == \
        (24, 144, 24, 8, 8, 3, 1, True)
    assert perfmodel.triton_ir_plan(b, 2, one_sm)["config"] == (8, 8, 32, 16, 32, 8), \
        "the GPU tile changed: recompute the figures below by hand"
    s, f = 2, 4  # fp16 elements and scratch; fp32 scale/shift
    x = y = 24 * 8 * 8 * s
    we, wd, wp = 24 * 144 * s + 2 * 144 * f, 9 * 144 * s + 2 * 144 * f, 144 * 24 * s + 2 * 24 * f
    # DRAM: x, every weight once, y, as the design (c).
    assert k.bytes == x + we + wd + wp + y
    # 9 hidden chunks of 16; the 10x10 window (8 of its 10 rows and columns inside the 8x8 map)
    # is expanded in 2 steps of 64 pixels for all 144 hidden channels into a 128 x 144 fp16
    # scratch region, which the 3x3 taps read back (100 x 16 per chunk); x's window (24
    # channels, within BLOCK_CIN) is read once, the residual reread at the end.
    chunks, window, region, halo = 9, 8 * 8, 128 * 144, 100 * 16
    assert k.l2_bytes == (window * 24 * s + we + wd + wp
                          + (region + chunks * halo) * s + x + y)
    # Expand: 128 rows x 16 channels x C_in padded to 32, per chunk; project: 64 x 16 x C_out
    # padded to 32 per chunk.
    assert k.tensor_flops == chunks * (128 * 16 * 32 * 2 + 64 * 16 * 32 * 2)
    # Expand epilogue (scale, shift, relu6: 4 per element), depthwise (18 + 4 per element) and
    # the project epilogue with the residual (3 per element of the 64 x 32 padded tile).
    assert k.cuda_flops == chunks * (128 * 16 * 4 + 64 * 16 * 22) + 64 * 32 * 3
    assert k.launches == 1


def test_triton_fused_block_rereads_input_channels_past_block_cin():
    # MobileNetV2 features.12 at 32x32, batch 1, fused on one SM: 96 -> 576 -> 96 on a 2x2
    # map, 36 hidden chunks. A program keeps its first BLOCK_CIN = 64 input channels resident
    # for every chunk and reloads the other 32 per chunk; before d8df343 (x_once off) all 96
    # were reloaded per chunk. Nothing else differs in L2.
    tr = _trace("mobilenet_v2", 1, 32)
    one_sm = dataclasses.replace(perfmodel.H100_SXM, sms=1)
    indices = dict(perfmodel._blocks(tr.layers))["features.12"]
    b = perfmodel.ir_shape(tr, indices)
    assert (b.c_in, b.hidden, b.h, b.w) == (96, 576, 2, 2)
    assert perfmodel.triton_ir_plan(b, 2, one_sm)["config"][2] == 64
    once, per_chunk = (_block_kernels(tr, "triton", "features.12", one_sm, off)[1]
                       for off in ((), {"x_once"}))
    assert per_chunk.l2_bytes - once.l2_bytes == 4 * (96 * 36 - (64 + 32 * 36)) * 2
    assert per_chunk.bytes == once.bytes


def test_triton_split_block_by_hand():
    # On 132 SMs one tile is too few programs: the block splits, hidden goes through DRAM.
    tr, _ = _small_v2()
    # 144 hidden channels are whole chunks of 16: no padding, no copy of the project weight.
    _, expand_dw, project = _block_kernels(tr, "triton", "features.3")
    s, f = 2, 4
    x = y = 24 * 8 * 8 * s
    hidden = 144 * 8 * 8 * s
    assert expand_dw.bytes == x + (24 * 144 * s + 2 * 144 * f) + (9 * 144 * s + 2 * 144 * f) \
        + hidden
    # pwconv_bn_act's small_n tile (64 x 32 x 32): one program reads hidden, the weights, x for
    # the residual and writes y; K = 144 padded to 160.
    assert project.bytes == hidden + 144 * 24 * s + 2 * 24 * f + x + y
    assert project.tensor_flops == 2 * 64 * 32 * 160


def test_triton_split_hidden_is_padded_by_hand():
    # MobileNetV3-small features.2 at 32x32, batch 1: 16 -> 72 -> 24, dw 3x3 s2 to 4x4; one
    # tile, so it splits. The hidden tensor's 72 channels are padded to 80 (5 chunks of 16):
    # written and read as 80, the project weight copied to 80 columns, K = 80 padded to 96.
    tr = _trace("mobilenet_v3_small", 1, 32)
    _, expand_dw, pad, project = _block_kernels(tr, "triton", "features.2")
    s, f, pixels = 2, 4, 4 * 4
    x, y = 16 * 8 * 8 * s, 24 * pixels * s
    hidden = pixels * 80 * s
    assert expand_dw.bytes == x + (16 * 72 * s + 2 * 72 * f) + (9 * 72 * s + 2 * 72 * f) \
        + hidden
    assert pad.bytes == 24 * (72 + 80) * s
    assert project.bytes == hidden + 24 * 80 * s + 2 * 24 * f + y
    assert project.tensor_flops == 2 * 64 * 32 * 96


def test_triton_scratch_beyond_l2_is_charged_to_dram():
    # The small V2 block fused on one SM: one program, one wave, a 128 x 144 fp16 scratch
    # region. With an L2 1000 bytes smaller than it, those bytes reach DRAM.
    tr, _ = _small_v2()
    one_sm = dataclasses.replace(perfmodel.H100_SXM, sms=1)
    region = 128 * 144 * 2
    small_l2 = dataclasses.replace(one_sm, l2_size=region - 1000)
    (_, fits), (_, spills) = (_block_kernels(tr, "triton", "features.3", g)
                              for g in (one_sm, small_l2))
    assert spills.bytes == fits.bytes + 1000
    assert spills.l2_bytes == fits.l2_bytes


def test_the_stem_converts_the_input_to_channels_last_once():
    # fastdw's modules compute channels_last on CUDA: the first (the stem) copies the NCHW
    # input, in (d) and (e) alike; no other block copies.
    n = 2
    tr = _trace("mobilenet_v2", n, 32)
    for strategy in ("triton", "cuda"):
        blocks = perfmodel.kernels(tr, strategy, "fp16")
        copy = blocks[0][1][0]
        assert copy.bytes == 2 * n * 3 * 32 * 32 * 2 and copy.launches == 1, strategy
        off = perfmodel.kernels(tr, strategy, "fp16", off={"channels_last"})
        assert off[0][1] == blocks[0][1][1:] and off[1:] == blocks[1:], strategy


def test_every_triton_change_can_be_switched_off(monkeypatch):
    # Each switch changes some modelled figure of a configuration where its change applies:
    # MobileNetV3-small (k5 blocks, widths not multiples of 16) at 96x96, batch 1 and 8, on
    # 8 SMs (its 12x12 blocks' 4 tiles split at batch 1 and run fused at 8), with a scratch
    # budget of one byte (the waves follow the resident-programs rule alone).
    monkeypatch.setattr(_ir_module(), "SCRATCH_BUDGET", 1)
    gpu = dataclasses.replace(perfmodel.H100_SXM, sms=8)
    reports = {}

    def figures(batch, off=()):
        tr = _trace("mobilenet_v3_small", batch, 96)
        ks = [k for _, b in perfmodel.kernels(tr, "triton", "fp16", gpu, off) for k in b]
        return (sum(k.bytes for k in ks), sum(k.l2 for k in ks), sum(k.launches for k in ks),
                sum(k.tensor_flops + k.cuda_flops for k in ks))
    for batch in (1, 8):
        reports[batch] = figures(batch)
        for change in perfmodel.TRITON_CHANGES:
            reports[batch, change] = figures(batch, {change})
    for change in perfmodel.TRITON_CHANGES:
        assert any(reports[batch, change] != reports[batch] for batch in (1, 8)), change
    with pytest.raises(ValueError, match="off: unknown change"):
        perfmodel.kernels(_trace("mobilenet_v3_small", 1, 96), "triton", "fp16", off={"x"})


def test_triton_plan_follows_the_launcher(monkeypatch):
    # Run the launcher with its kernels replaced by recorders: the model's choice of path, tile,
    # grid, launches (persistent or not) and scratch must be the launcher's own. The launcher's
    # residency compiles both variants (warmup) and reads them (compiled_residency): here the
    # recorder's warmup hands over the variant, and the model's stand-in for a compiled kernel
    # (perfmodel.triton_residency) answers, so the launcher's launch_plan decides.
    ir = _ir_module()
    calls, projects, warmed = [], [], []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kw: calls.append((grid, args, kw))

        def warmup(self, *args, PERSISTENT, **kw):
            warmed.append(PERSISTENT)
            return PERSISTENT

    monkeypatch.setattr(ir, "ir_kernel", Recorder())
    monkeypatch.setattr(ir, "pw_forward", lambda *a, **kw: projects.append(a) or a[0])
    tr = perfmodel.trace("mobilenet_v3_small", 8, 64)
    blocks = dict(perfmodel._blocks(tr.layers))
    branches = set()
    # A budget of one byte leaves the waves to the resident-programs rule.
    for sms, budget in ((1, ir.SCRATCH_BUDGET), (132, ir.SCRATCH_BUDGET), (3, 1), (132, 1)):
        monkeypatch.setattr(ir, "multiprocessors", lambda device: sms)
        monkeypatch.setattr(ir, "SCRATCH_BUDGET", budget)
        gpu = dataclasses.replace(perfmodel.H100_SXM, sms=sms)
        for name in ("features.1", "features.2", "features.4"):  # SE, plain, SE k5 s2
            b = perfmodel.ir_shape(tr, blocks[name])
            plan = perfmodel.triton_ir_plan(b, 2, gpu)
            _, _, bcin, _, bcout, warps = plan["config"]
            residency = perfmodel.triton_residency(gpu, plan["regs"], warps,
                                                   perfmodel.triton_persistent_pays(
                                                       plan["fused"], 2, plan["regs"], b.k,
                                                       bcin, bcout))
            monkeypatch.setattr(ir, "compiled_residency", residency)
            calls.clear()
            projects.clear()
            warmed.clear()
            x = torch.randn(b.n, b.c_in, b.h, b.w, dtype=torch.float16)
            # channels_last, as fastdw's modules give it on CUDA (layers.feature_layout)
            ir.forward(x.contiguous(memory_format=torch.channels_last), _weights(b), b.stride,
                       b.act, b.residual, b.se_act, b.se_gate, gpu_tiles=True)
            grid, args, kw = calls[0]
            label = (name, sms, budget)
            branches.add("plain" if not warmed else
                         "persistent" if plan["persistent"] else "waves")
            assert len(calls) == plan["launches"] and grid == plan["grid"], label
            assert all(kw["PERSISTENT"] == plan["persistent"] for _, _, kw in calls), label
            assert kw["maxnreg"] == plan["regs"], label
            assert not projects == plan["fused"], label
            assert (kw["BLOCK_OH"], kw["BLOCK_OW"], kw["BLOCK_CIN"], kw["BLOCK_HID"],
                    kw["BLOCK_COUT"], kw["num_warps"]) == plan["config"], label
            assert kw["SCRATCH_ROW"] == plan["row"] and kw["HID_ROW"] == plan["hid_row"], label
            # x, 3 expand and 3 depthwise and 3 project tensors, hidden, then the scratch: in
            # x's dtype, one region per program of a launch, as modelled.
            assert args[11].dtype == torch.float16, label
            assert args[11].numel() == max(1, plan["programs"] * plan["grid"][1]
                                           * plan["region"]), label
            if projects:  # the project GEMM reads the padded hidden tensor and weight
                hid, weight = projects[0][:2]
                assert hid.shape[1] == weight.shape[1] == plan["hid_row"], label
    assert branches == {"plain", "persistent", "waves"}


# Whether the persistent variant pays on sm_90 (neither spills nor fits fewer blocks per SM than
# the plain one), per " persistent" row of `python -m fastdw.kernels.triton.resources` as it
# compiled at 394802d: (plain, persistent) registers, and the persistent variant's spill.
SM90_PERSISTENT_PAYS = {
    "fused fp32 cin32 cout128 k5 s2 hardswish": True,    # 204 -> 229, 1 block each
    "split fp32 cin32 cout16 k5 s2 hardswish": True,     # 209 -> 219, 1 block each
    "fused fp16 cin64 cout128 k5 s2 hardswish": True,    # 105 -> 126, 2 blocks each
    "split fp16 cin64 cout16 k5 s2 hardswish": False,    # 76 -> 96: 3 -> 2 blocks
    "fused bf16 cin64 cout128 k5 s2 hardswish": True,    # 105 -> 124, 2 blocks each
    "split bf16 cin64 cout16 k5 s2 hardswish": False,    # 76 -> 95: 3 -> 2 blocks
    "fused fp32 cin32 cout128 k7 s1 silu c64": True,     # 206 -> 228, 1 block each
    "split fp32 cin32 cout16 k7 s1 silu c64": True,      # 210 -> 233, 1 block each
    "fused fp16 cin64 cout128 k7 s1 silu c64": True,     # 121 -> 128, 2 blocks each
    "split fp16 cin64 cout16 k7 s1 silu c64": False,     # 77 -> 124: 3 -> 2 blocks
    "fused bf16 cin64 cout128 k7 s1 silu c64": True,     # 122 -> 128, 2 blocks each
    "split bf16 cin64 cout16 k7 s1 silu c64": False,     # 76 -> 117: 3 -> 2 blocks
    "fused fp16 cin64 cout64 k3 s1 relu6 c64": False,    # 127 -> 128, spills 8 B
    "fused fp16 cin64 cout128 k3 s1 relu6 c96": True,    # 128 -> 128, 2 blocks each
    "fused fp32 cin32 cout128 k7 s1 silu c120": True,    # 209 -> 233, 1 block each
    "split fp32 cin32 cout16 k7 s1 silu c120": True,     # 209 -> 234, 1 block each
    "fused fp16 cin64 cout128 k7 s1 silu c120": False,   # 122 -> 182: 2 -> 1 block
    "split fp16 cin64 cout16 k7 s1 silu c120": False,    # 80 -> 124: 3 -> 2 blocks
}


def test_persistent_rule_agrees_with_the_resource_table():
    # perfmodel.triton_persistent_pays on the constexprs and register cap of each persistent
    # row the resource check compiles (its labels: a new row must be judged here), against
    # what that row compiled to on sm_90, the H100 the model has.
    from fastdw.kernels.triton import resources
    rows = {label.removesuffix(" persistent"): (args, constexprs, options)
            for _, label, args, constexprs, options in resources._kernel_cases(False, False)
            if constexprs.get("PERSISTENT")}
    assert set(rows) == set(SM90_PERSISTENT_PAYS)
    for label, (args, c, options) in rows.items():
        pays = perfmodel.triton_persistent_pays(c["PROJECT"], args["x_ptr"].itemsize,
                                                options["maxnreg"], c["K"], c["BLOCK_CIN"],
                                                c["BLOCK_COUT"])
        assert pays == SM90_PERSISTENT_PAYS[label], label


def test_persistent_grid_of_mobilenet_v2_at_batch_256():
    # fp16 on the H100: the fused blocks go persistent, one launch each (sm_90 compiles of V2's
    # blocks: the 24-channel ones stay at one block per SM, the others at two without
    # spilling), except the 64 -> 384 -> 64 ones (features.8-10: their looped variant spills
    # 8 B); the split 160/320-channel ones lose a block per SM: plain waves. Every fused block
    # at batch 256 would otherwise launch in waves.
    tr = _trace("mobilenet_v2", 256, 224)
    plans = {name: perfmodel.triton_ir_plan(perfmodel.ir_shape(tr, idx), 2, perfmodel.H100_SXM)
             for name, idx in perfmodel._blocks(tr.layers)
             if perfmodel._is_inverted_residual(tr.layers, idx)}
    persistent = {name for name, plan in plans.items() if plan["persistent"]}
    assert persistent == {f"features.{i}" for i in (*range(1, 8), 11, 12, 13)}
    assert all(plans[name]["launches"] == 1 and plans[name]["grid"][0] ==
               plans[name]["programs"] for name in persistent)
    assert all(plans[name]["launches"] > 1 for name in plans if name not in persistent)
    before = {name: perfmodel.triton_ir_plan(perfmodel.ir_shape(tr, idx), 2,
                                             perfmodel.H100_SXM, off={"persistent"})
              for name, idx in perfmodel._blocks(tr.layers) if name in persistent}
    assert all(plan["launches"] > 1 for name, plan in before.items() if name != "features.1")


def test_triton_persistent_scratch_beyond_l2_is_charged_per_round():
    # The small V2 block (24 channels: cap 255, one program per SM, persistent) at batch 4 on
    # one SM: one program takes the 4 tiles in turn, reusing one 128 x 144 fp16 region. With an
    # L2 1000 bytes smaller than it, each of the 4 rounds evicts 1000 bytes to DRAM; the plain
    # waves before (one wave of the 4 images, 4 regions) evicted 3 regions + 1000 bytes once.
    tr = _trace("mobilenet_v2", 4, 32)
    b = perfmodel.ir_shape(tr, dict(perfmodel._blocks(tr.layers))["features.3"])
    region = 128 * 144 * 2
    gpu = dataclasses.replace(perfmodel.H100_SXM, sms=1, l2_size=region - 1000)
    plan = perfmodel.triton_ir_plan(b, 2, gpu)
    assert (plan["fused"], plan["persistent"], plan["programs"], plan["launches"]) == \
        (True, True, 1, 1)
    assert plan["spill"] == 4 * 1000
    waves = perfmodel.triton_ir_plan(b, 2, gpu, off={"persistent"})
    assert (waves["persistent"], waves["wave"], waves["spill"]) == (False, 4, 3 * region + 1000)


def test_triton_se_tile_sums_are_summed_once(monkeypatch):
    # MobileNetV3-small features.1 (SE, split) at batch 8 on one SM with a scratch budget of one
    # byte: the fp16 split block does not go persistent, so it launches in waves of one image.
    # The launcher sums every launch's per-tile sums once at the end (one pass); before
    # 4b70f8b each wave's sums were summed and copied into the pooled vector.
    monkeypatch.setattr(_ir_module(), "SCRATCH_BUDGET", 1)
    tr = _trace("mobilenet_v3_small", 8, 64)
    one_sm = dataclasses.replace(perfmodel.H100_SXM, sms=1)
    b = perfmodel.ir_shape(tr, dict(perfmodel._blocks(tr.layers))["features.1"])
    plan = perfmodel.triton_ir_plan(b, 2, one_sm)
    assert (plan["persistent"], plan["launches"]) == (False, 8)
    now, before = (_block_kernels(tr, "triton", "features.1", one_sm, off)
                   for off in ((), {"persistent"}))
    sums = 8 * b.hidden * 4
    assert len(before) == len(now) + 1
    assert [k.launches for k in now[2:4]] == [1, 1]
    assert [(k.bytes, k.launches) for k in before[2:4]] == [(now[2].bytes, 8), (2 * sums, 8)]


def _weights(b):
    from fastdw.contract import BlockWeights

    def t(*shape):
        return torch.randn(*shape, dtype=torch.float16)

    def v(c):
        return torch.randn(c)
    e, se = b.expand, b.squeeze > 0
    return BlockWeights(t(b.hidden, b.c_in) if e else None, v(b.hidden) if e else None,
                        v(b.hidden) if e else None, t(b.hidden, 1, b.k, b.k), v(b.hidden),
                        v(b.hidden), t(b.c_out, b.hidden), v(b.c_out), v(b.c_out),
                        *((t(b.squeeze, b.hidden), t(b.squeeze), t(b.hidden, b.squeeze),
                           t(b.hidden)) if se else (None,) * 4))


def test_cuda_blocks_without_a_kernel_run_the_reference_composite_by_hand(monkeypatch):
    # MobileNetV2 features.1 at 32x32, batch 1: dw 3x3 32 ch at 16x16, project 32->16. Without
    # a CUDA inverted_residual kernel the block is fastdw.kernels.reference's composite, in fp32.
    monkeypatch.setattr(perfmodel, "cuda_has_block_kernel", lambda: False)
    tr = _trace("mobilenet_v2", 1, 32)
    ks = _block_kernels(tr, "cuda", "features.1")
    h, y = 32 * 16 * 16, 16 * 16 * 16            # elements of x / hidden and of y
    # x to fp32; dw weight to fp32, conv, * scale, + shift, relu6; project weight to fp32,
    # conv, * scale, + shift; y back to fp16.
    assert [k.bytes for k in ks] == [h * 6, 288 * 6, h * 8 + 288 * 4, h * 8 + 128, h * 8 + 128,
                                     h * 8, 512 * 6, h * 4 + 512 * 4 + y * 4, y * 8 + 64,
                                     y * 8 + 64, y * 6]
    assert all(k.dtype == "fp32" for k in ks)


def test_cuda_block_kernel_by_hand(monkeypatch):
    # csrc/cuda/inverted_residual.cuh on features.3 of the small MobileNetV2 (24 -> 144 -> 24,
    # 3x3 s1 at 8x8, residual): one block (8x8 tile, 64 output channels), 5 hidden chunks of 32.
    monkeypatch.setattr(perfmodel, "cuda_has_block_kernel", lambda: True)
    tr, _ = _small_v2()
    taps, k = _block_kernels(tr, "cuda", "features.3")
    s, f = 2, 4
    x = y = 24 * 8 * 8 * s
    # The depthwise weights go to the kernel as fp32 taps, cast and transposed per call.
    we, wd, wp = 24 * 144 * s + 2 * 144 * f, (9 + 2) * 144 * f, 144 * 24 * s + 2 * 24 * f
    assert (taps.bytes, taps.launches) == (9 * 144 * (s + 3 * f), 2)
    assert k.bytes == x + we + wd + wp + y
    # x's window (its 64 pixels inside the map) staged once per hidden chunk; every weight once;
    # the residual and y; the hidden window stays in shared memory.
    assert k.l2_bytes == 64 * 24 * s * 5 + we + wd + 144 * 24 * s + 2 * y
    # Expand: the 100-pixel window in 2 steps of 64 rows, C_in padded to 32; project 64 x 64.
    assert k.tensor_flops == 5 * (128 * 32 * 32 * 2 + 64 * 32 * 64 * 2)
    assert k.cuda_flops == 5 * (100 * 32 * 4 + 64 * 32 * 22) + 64 * 64 * 3


def _cuda_runs_reference(monkeypatch, b):
    """Whether the cuda backend hands block b (random weights, a CPU channels_last x) to
    fastdw.kernels.reference rather than to its kernels."""
    cuda = importlib.import_module("fastdw.kernels.cuda")

    class Fallback(Exception):
        pass

    def fallback(*args):
        raise Fallback

    monkeypatch.setattr(cuda.reference, "inverted_residual", fallback)
    x = torch.randn(b.n, b.c_in, b.h, b.w, dtype=torch.float16)
    try:
        cuda.inverted_residual(x.contiguous(memory_format=torch.channels_last), _weights(b),
                               b.stride, b.act, b.residual, b.se_act, b.se_gate)
    except Fallback:
        return True
    except Exception:  # the kernel's op (not loaded here, or refusing the call)
        return False
    return False


def test_cuda_block_kernel_follows_the_backend(monkeypatch):
    has = hasattr(importlib.import_module("fastdw.kernels.cuda"), "inverted_residual")
    assert perfmodel.cuda_has_block_kernel() == has
    if not has:
        assert perfmodel.CUDA_BLOCK_SE_KERNEL is False
        return
    # Which blocks the backend sends to its kernels: plain ones, and SE ones where the model
    # says so.
    tr = _trace("mobilenet_v3_small", 1, 32)
    blocks = dict(perfmodel._blocks(tr.layers))
    plain, se = (perfmodel.ir_shape(tr, blocks[name]) for name in ("features.2", "features.1"))
    assert plain.squeeze == 0 and se.squeeze > 0
    assert not _cuda_runs_reference(monkeypatch, plain)
    assert _cuda_runs_reference(monkeypatch, se) != perfmodel.CUDA_BLOCK_SE_KERNEL
    # The model's tile is the kernel's.
    text = "".join(p.read_text() for p in (ROOT / "csrc" / "cuda").glob("*.*h"))
    consts = dict(re.findall(r"\b(kIr\w+) = (\w+)", text))
    assert (int(consts["kIrTile"]), int(consts["kIrChunk"]), int(consts["kIrCout"]),
            int(consts["kIrThreads"])) == (perfmodel.CUDA_IR_TILE, perfmodel.CUDA_IR_CHUNK,
                                           perfmodel.CUDA_IR_COUT, perfmodel.CUDA_IR_THREADS)
    assert consts["kIrRow"] == "kIrChunk" and perfmodel.CUDA_IR_ROW == 32 + 8


def test_cuda_squeeze_excite_block_by_hand(monkeypatch):
    # MobileNetV3-small features.1 at 64x64, batch 1: dw 3x3 s2 16 ch (32 -> 16), SE 16->8->16,
    # project 16->16. The first kernel writes d and the per-tile sums (2 x 2 tiles, fp32), the
    # second reads them, the SE and project weights, and writes y.
    monkeypatch.setattr(perfmodel, "cuda_has_block_kernel", lambda: True)
    monkeypatch.setattr(perfmodel, "CUDA_BLOCK_SE_KERNEL", True)
    tr = _trace("mobilenet_v3_small", 1, 64)
    taps, first, fc1_cast, fc2_cast, second = _block_kernels(tr, "cuda", "features.1")
    s, f = 2, 4
    x, d = 16 * 32 * 32 * s, 16 * 16 * 16 * s
    sums = 4 * 16 * f
    assert first.bytes == x + (9 + 2) * 16 * f + d + sums
    # The SE weights and biases cast to fp32 on the host (two launches per fc).
    fc1, fc2 = 8 * (16 + 1), 16 * (8 + 1)
    assert (fc1_cast.bytes, fc2_cast.bytes) == (fc1 * (s + f), fc2 * (s + f))
    assert second.bytes == sums + (fc1 + fc2) * f + d + (16 * 16 * s + 2 * 16 * f) + d


def test_cuda_block_shared_memory_by_hand():
    # k=3 s=1 fp16 with an expand: x and expand-weight staging (64 and 32 rows of 40 halves),
    # the 10x10 fp32 hidden window of 32 channels, the depthwise output and project weights.
    tr, indices = _small_v2()
    b = perfmodel.ir_shape(tr, indices)
    assert perfmodel.cuda_ir_shared_bytes(b, 2) == (64 * 40 * 2 + 32 * 40 * 2 + 100 * 32 * 4
                                                    + 64 * 40 * 2 + 64 * 40 * 2)
    # With SE the project weights give way to the 128 threads' fp32 partial sums.
    assert perfmodel.cuda_ir_shared_bytes(b, 2, se=True) == (
        64 * 40 * 2 + 32 * 40 * 2 + 100 * 32 * 4 + 64 * 40 * 2 + 128 * 4)


@pytest.mark.parametrize("dtype, mma", [("fp16", True), ("fp32", False)])
def test_cuda_pwconv_layer_by_hand(dtype, mma):
    # MobileNetV2 features.18 at 32x32, batch 2: pw 320->1280 + relu6 on 1x1 maps (M = 2).
    tr = _trace("mobilenet_v2", 2, 32)
    (k,) = dict(perfmodel.kernels(tr, "cuda", dtype))["features.18"]
    s = {"fp16": 2, "fp32": 4}[dtype]
    m, c_in, c_out = 2, 320, 1280
    assert k.bytes == (m * c_in + c_out * c_in + m * c_out) * s + 2 * c_out * 4
    # 64 x 64 tiles: 1 row tile, 20 column tiles; x is read per column tile, w per row tile.
    assert k.l2_bytes == (20 * m * c_in + c_out * c_in + m * c_out) * s
    gemm = 2 * 64 * 1280 * 320  # K = 320 is whole chunks of 32 (mma) and of 16 (FMA)
    assert (k.tensor_flops, k.cuda_flops) == ((gemm, m * c_out * 4) if mma
                                              else (0, gemm + m * c_out * 4))


def test_triton_dwconv_layer_takes_the_launchers_tile_for_small_maps():
    # MobileNetV1's last depthwise (1024 channels at 7x7 at 224x224, fp16), batch 1: 16 programs
    # of 8x8 tiles (16 channel blocks of 64), fewer than an H100's 132 SMs, so the launcher takes
    # 4x4 tiles: 64 programs, each loading its k*k weights and scale and shift, and windows of
    # 5 + 4 rows and columns inside the map (7 with the 8x8 tile, on a GPU of 16 SMs).
    tr = perfmodel.trace("mobilenet_v1", 1, 224)
    i = next(i for i, layer in enumerate(tr.layers) if layer.desc.startswith("dw3x3 s1 1024 @7"))

    def kernel(sms):
        gpu = dataclasses.replace(perfmodel.H100_SXM, sms=sms)
        return [k for _, ks in perfmodel.kernels(tr, "triton", "fp16", gpu) for k in ks
                if i in k.bytes_by_layer][1]
    c, s = 1024, 2
    y = 49 * c * s
    assert kernel(132).l2_bytes == 9 * 9 * c * s + 64 * (9 + 2) * 64 * s + y
    assert kernel(16).l2_bytes == 7 * 7 * c * s + 16 * (9 + 2) * 64 * s + y


def test_cuda_dwconv_layer_by_hand():
    # MobileNetV1 features.1's depthwise at 32x32 input, batch 1: 32 channels at 16x16, 3x3 s1.
    tr = perfmodel.trace("mobilenet_v1", 1, 32)
    i = next(i for i, layer in enumerate(tr.layers) if layer.desc.startswith("dw3x3 s1 32 @16"))
    taps, k = [k for _, ks in perfmodel.kernels(tr, "cuda", "fp16") for k in ks
               if i in k.bytes_by_layer]
    s, f, elems = 2, 4, 32 * 16 * 16
    # The host's fp32 tap-major weights: a cast (2 -> 4 bytes) and a transposed copy.
    assert (taps.bytes, taps.launches) == (9 * 32 * (s + f + f + f), 2)
    assert k.bytes == 2 * elems * s + (9 + 2) * 32 * f
    # 4 packs of 8 channels: blocks of 4 x 64 threads, each a strip of 64 pixels whose taps
    # span 3 rows of the 16-pixel-wide map; 4 blocks.
    assert k.l2_bytes == 4 * (3 * 16 * 32 * s + 11 * 32 * f) + elems * s
    assert k.cuda_flops == 256 * 32 * (18 + 2 + 2)


def test_cuda_tile_constants_are_the_headers():
    pw = (ROOT / "csrc" / "cuda" / "pwconv_bn_act.cuh").read_text()
    consts = dict(re.findall(r"\b(k\w+) = (\d+)", pw))
    assert int(consts["kMmaTile"]) == int(consts["kFfmaTile"]) == perfmodel.CUDA_PW_TILE
    assert int(consts["kMmaK"]) == perfmodel.CUDA_PW_MMA_K
    assert int(consts["kFfmaK"]) == perfmodel.CUDA_PW_FFMA_K
    dw = (ROOT / "csrc" / "cuda" / "dwconv_bn_act.cuh").read_text()
    assert f"constexpr int V = {perfmodel.CUDA_PACK_BYTES} / sizeof(T);" in dw
    assert f"__launch_bounds__({perfmodel.CUDA_DW_THREADS})" in dw
    assert f"while (bx < {perfmodel.CUDA_DW_MAX_GROUPS} && bx < groups) bx *= 2;" in dw
    assert f"by = {perfmodel.CUDA_DW_THREADS} / bx;" in dw


def test_committed_figures_of_mobilenet_v2(reports):
    # The committed triton blocks move at least the design's DRAM bytes and more through L2
    # (scratch, per-chunk window reloads).
    r = reports["mobilenet_v2"]
    assert r.total_bytes("design") < r.total_bytes("triton") < r.total_bytes("folded")
    assert r.total_l2("triton") > 5 * r.total_bytes("triton")
    assert r.bound("triton", "features.3") == "L2"
    for block in r.fused_blocks():
        assert r.block_l2["cuda"][block] > 0 and r.block_l2["triton"][block] > 0
