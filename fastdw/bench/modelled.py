"""fastdw.perfmodel's modelled GPU figures as a text table and a plot, every figure labelled
"modelled" (no GPU ran). Used by `python -m fastdw bench` and bench/perf_model.py."""
from fastdw import perfmodel

LABELS = {"eager": "(a) eager", "folded": "(b) folded", "design": "(c) design",
          "triton": "(d) triton", "cuda": "(e) cuda"}
# The strategies that are fastdw's committed kernels (the others are comparisons).
COMMITTED = ("triton", "cuda")
# The issue-3 target of the fused design (c), checked when the configuration is the one it
# names.
TARGET = {"config": ("mobilenet_v2", 32, 224, "fp16"), "folded": 5.0, "eager": 12.0}

_ROW = ("{:<24} {:<36} {:>8} " + "{:>8} " * 5 + "{:>7} " * 5 + "{:>8} {:>8} {:>6} {:>6}")


def _mb(b):
    return f"{b / 1e6:.2f}"


def _us(t):
    return f"{t * 1e6:.1f}"


def _ratio(num, den):
    return f"{num / den:.1f}x" if den else "-"


def table(report):
    """The per-layer and per-block table as lines of text, every figure marked as modelled."""
    tr, s = report.trace, perfmodel.STRATEGIES
    gpu = report.gpu
    lines = [
        f"MODELLED, not measured: {tr.model}, batch {tr.batch}, {tr.resolution}x{tr.resolution},"
        f" {report.dtype}, roofline of an {gpu.name} ({gpu.dram_bytes_per_s / 1e12:.2f} TB/s DRAM,"
        f" {gpu.l2_bytes_per_s / 1e12:.1f} TB/s L2 (assumed),"
        f" {gpu.tensor_flops[report.dtype] / 1e12:.0f} TFLOP/s tensor-core convs,"
        f" {gpu.cuda_core_flops / 1e12:.0f} TFLOP/s CUDA-core fp32 FMA for depthwise/elementwise,"
        f" {gpu.sms} SMs)",
        "(a) eager: conv, BN, act, add as separate passes; (b) BN folded, act + residual in the"
        " conv epilogue; (c) design: inverted-residual blocks fused, hidden tensor kept on chip"
        " (the ideal design); (d) triton and (e) cuda: fastdw's committed kernels on that"
        " backend (halo recompute, padded tiles, scratch, split blocks, reference fallbacks)",
        "Block rows carry the modelled kernel times; layer rows (indented, '.' = the block module"
        " itself) carry the modelled DRAM bytes each layer accounts for. 'L2 MB': what the"
        " committed kernels' loads and stores move through L2; 'bound': what limits them"
        " (DRAM, L2 or FLOPs).",
        "",
        _ROW.format("block / layer", "what", "MFLOP", *(f"MB {_letter(k)}" for k in s),
                    *(f"us {_letter(k)}" for k in s), "L2 MB(d)", "L2 MB(e)", "(d)", "(e)"),
        _ROW.format("", "", "modelled", *(["modelled"] * 5), *(["modelld"] * 5), "modelled",
                    "modelled", "bound", "bound"),
    ]
    fused = set(report.fused_blocks())
    for block, indices in report.blocks():
        by = {k: sum(report.layer_bytes[k][i] for i in indices) for k in s}
        flops = sum(tr.layers[i].flops for i in indices)
        kind = "fused IR block" if block in fused else "per-layer ops"
        counts = "/".join(str(report.block_kernels[k][block]) for k in s)
        lines.append(_ROW.format(block, f"{kind}, kernels {counts}", f"{flops / 1e6:.1f}",
                                 *(_mb(by[k]) for k in s),
                                 *(_us(report.block_time[k][block]) for k in s),
                                 *(_mb(report.block_l2[k][block]) for k in COMMITTED),
                                 *(report.bound(k, block) for k in COMMITTED)))
        for i in indices:
            layer = tr.layers[i]
            name = layer.name[len(block) + 1:] if layer.name.startswith(block + ".") else "."
            lines.append(_ROW.format("  " + name, layer.desc[:36], f"{layer.flops / 1e6:.1f}",
                                     *(_mb(report.layer_bytes[k][i]) for k in s),
                                     *([""] * 9)))
    total = {k: report.total_bytes(k) for k in s}
    times = {k: report.total_time(k) for k in s}
    lines += [
        _ROW.format("TOTAL (modelled)", "kernels " + "/".join(
            str(report.total_kernels(k)) for k in s), f"{report.total_flops / 1e6:.0f}",
            *(_mb(total[k]) for k in s), *(_us(times[k]) for k in s),
            *(_mb(report.total_l2(k)) for k in COMMITTED), "", ""),
        "",
        "modelled totals: " + "; ".join(
            f"{LABELS[k]} {total[k] / 1e6:.1f} MB, {times[k] * 1e6:.1f} us, "
            f"{report.total_kernels(k)} kernels" for k in s),
        "modelled executed GFLOP (padding, halo recompute): " + "; ".join(
            f"{LABELS[k]} {report.total_executed_flops(k) / 1e9:.2f}" for k in s),
        "modelled L2 MB of the committed kernels: " + "; ".join(
            f"{LABELS[k]} {report.total_l2(k) / 1e6:.1f}" for k in COMMITTED),
        f"modelled byte ratios: (b)/(c) = {total['folded'] / total['design']:.2f}x, "
        f"(a)/(c) = {total['eager'] / total['design']:.2f}x; modelled time ratios: "
        f"(b)/(c) = {times['folded'] / times['design']:.2f}x, "
        f"(a)/(c) = {times['eager'] / times['design']:.2f}x",
        "modelled, committed kernels against (b) and (c): " + "; ".join(
            f"{LABELS[k]} bytes (b)/{_letter(k)} = {total['folded'] / total[k]:.2f}x, "
            f"time (b)/{_letter(k)} = {times['folded'] / times[k]:.2f}x, "
            f"time {_letter(k)}/(c) = {times[k] / times['design']:.2f}x" for k in COMMITTED),
    ]
    if (tr.model, tr.batch, tr.resolution, report.dtype) == TARGET["config"]:
        met = all(total[k] / total["design"] >= TARGET[k] for k in ("folded", "eager"))
        lines.append(f"issue 3 target of the design, bytes (b)/(c) >= {TARGET['folded']:g}x and "
                     f"(a)/(c) >= {TARGET['eager']:g}x: {'met' if met else 'NOT met'} (modelled)")
    return lines


def _letter(strategy):
    """"(a)" .. "(e)"."""
    return LABELS[strategy].split()[0]


def plot(report, path):
    """Per-block modelled DRAM bytes and times of (a)-(e) as grouped bars, written to `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr, s = report.trace, perfmodel.STRATEGIES
    blocks = report.blocks()
    names = [b.replace("features.", "f") for b, _ in blocks]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(12, 0.75 * len(blocks)), 8),
                                      sharex=True)
    width = 0.8 / len(s)
    colors = {"eager": "#c44e52", "folded": "#dd8452", "design": "#8fa9d6", "triton": "#4c72b0",
              "cuda": "#55a868"}
    for j, k in enumerate(s):
        xs = [i + (j - (len(s) - 1) / 2) * width for i in range(len(blocks))]
        mb = [sum(report.layer_bytes[k][i] for i in idx) / 1e6 for _, idx in blocks]
        us = [report.block_time[k][b] * 1e6 for b, _ in blocks]
        label = (f"{LABELS[k]}: {report.total_bytes(k) / 1e6:.0f} MB, "
                 f"{report.total_time(k) * 1e6:.0f} us total")
        top.bar(xs, mb, width, color=colors[k], label=label)
        bottom.bar(xs, us, width, color=colors[k], label=LABELS[k])
    fused = set(report.fused_blocks())
    for i, (b, _) in enumerate(blocks):
        if b in fused:
            top.axvspan(i - 0.45, i + 0.45, color="#4c72b0", alpha=0.06, lw=0)
    top.set_ylabel("DRAM traffic, MB (modelled)")
    bottom.set_ylabel(f"{report.gpu.name} roofline time, us (modelled)")
    top.legend(fontsize=8)
    bottom.set_xticks(range(len(blocks)), names, rotation=60, ha="right", fontsize=8)
    bottom.set_xlabel("block (shaded: an inverted-residual block, one op in fastdw)")
    times = {k: report.total_time(k) for k in s}
    title = (f"MODELLED, not measured: {tr.model}, batch {tr.batch}, "
             f"{tr.resolution}x{tr.resolution}, {report.dtype}. Time (b)/(c) design "
             f"{times['folded'] / times['design']:.1f}x; committed kernels: "
             + ", ".join(f"(b)/{_letter(k)} {k} {times['folded'] / times[k]:.1f}x"
                         for k in COMMITTED))
    top.set_title(title, fontsize=10)
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Title": title})  # readable without the image
    plt.close(fig)
