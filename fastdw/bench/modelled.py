"""fastdw.perfmodel's modelled GPU figures as a text table and a plot, every figure labelled
"modelled" (no GPU ran). Used by `python -m fastdw bench` and bench/perf_model.py."""
from fastdw import perfmodel

LABELS = {"eager": "(a) eager", "folded": "(b) folded", "fastdw": "(c) fastdw"}
# The issue-3 target, checked when the configuration is the one it names.
TARGET = {"config": ("mobilenet_v2", 32, 224, "fp16"), "folded": 5.0, "eager": 12.0}

_ROW = "{:<24} {:<40} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6}"


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
        f" {gpu.tensor_flops[report.dtype] / 1e12:.0f} TFLOP/s tensor-core convs,"
        f" {gpu.cuda_core_flops / 1e12:.0f} TFLOP/s CUDA-core fp32 FMA for depthwise/elementwise)",
        "(a) eager: conv, BN, act, add as separate passes; (b) BN folded, act + residual in the"
        " conv epilogue; (c) fastdw: inverted-residual blocks fused, hidden tensor kept on chip",
        "Block rows carry the modelled kernel times; layer rows (indented, '.' = the block module"
        " itself) carry the modelled bytes each layer accounts for. '(c) bound': what limits the"
        " block's fastdw kernels, DRAM bytes or FLOPs.",
        "",
        _ROW.format("block / layer", "what", "MFLOP", "MB (a)", "MB (b)", "MB (c)", "us (a)",
                    "us (b)", "us (c)", "b/c", "a/c", "(c)"),
        _ROW.format("", "", "modelled", "modelled", "modelled", "modelled", "modelled",
                    "modelled", "modelled", "bytes", "bytes", "bound"),
    ]
    fused = set(report.fused_blocks())
    for block, indices in report.blocks():
        by = {k: sum(report.layer_bytes[k][i] for i in indices) for k in s}
        flops = sum(tr.layers[i].flops for i in indices)
        kind = "fused IR block" if block in fused else "per-layer ops"
        counts = "/".join(str(report.block_kernels[k][block]) for k in s)
        lines.append(_ROW.format(block, f"{kind}, kernels a/b/c {counts}", f"{flops / 1e6:.1f}",
                                 *(_mb(by[k]) for k in s),
                                 *(_us(report.block_time[k][block]) for k in s),
                                 _ratio(by["folded"], by["fastdw"]),
                                 _ratio(by["eager"], by["fastdw"]),
                                 "FLOPs" if report.compute_bound("fastdw", block) else "DRAM"))
        for i in indices:
            layer = tr.layers[i]
            name = layer.name[len(block) + 1:] if layer.name.startswith(block + ".") else "."
            lines.append(_ROW.format("  " + name, layer.desc[:40], f"{layer.flops / 1e6:.1f}",
                                     *(_mb(report.layer_bytes[k][i]) for k in s),
                                     "", "", "", "", "", ""))
    total = {k: report.total_bytes(k) for k in s}
    times = {k: report.total_time(k) for k in s}
    lines += [
        _ROW.format("TOTAL (modelled)", "kernels a/b/c " + "/".join(
            str(report.total_kernels(k)) for k in s), f"{report.total_flops / 1e6:.0f}",
            *(_mb(total[k]) for k in s), *(_us(times[k]) for k in s),
            _ratio(total["folded"], total["fastdw"]), _ratio(total["eager"], total["fastdw"]), ""),
        "",
        "modelled totals: " + "; ".join(
            f"{LABELS[k]} {total[k] / 1e6:.1f} MB, {times[k] * 1e6:.1f} us" for k in s),
        f"modelled byte ratios: (b)/(c) = {total['folded'] / total['fastdw']:.2f}x, "
        f"(a)/(c) = {total['eager'] / total['fastdw']:.2f}x; modelled time ratios: "
        f"(b)/(c) = {times['folded'] / times['fastdw']:.2f}x, "
        f"(a)/(c) = {times['eager'] / times['fastdw']:.2f}x",
    ]
    if (tr.model, tr.batch, tr.resolution, report.dtype) == TARGET["config"]:
        met = all(total[k] / total["fastdw"] >= TARGET[k] for k in ("folded", "eager"))
        lines.append(f"issue 3 target, bytes (b)/(c) >= {TARGET['folded']:g}x and (a)/(c) >= "
                     f"{TARGET['eager']:g}x: {'met' if met else 'NOT met'} (modelled)")
    return lines


def plot(report, path):
    """Per-block modelled bytes and times of (a), (b), (c) as grouped bars, written to `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr, s = report.trace, perfmodel.STRATEGIES
    blocks = report.blocks()
    names = [b.replace("features.", "f") for b, _ in blocks]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(10, 0.55 * len(blocks)), 8), sharex=True)
    width = 0.27
    colors = {"eager": "#c44e52", "folded": "#dd8452", "fastdw": "#4c72b0"}
    for j, k in enumerate(s):
        xs = [i + (j - 1) * width for i in range(len(blocks))]
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
    top.legend(fontsize=9)
    bottom.set_xticks(range(len(blocks)), names, rotation=60, ha="right", fontsize=8)
    bottom.set_xlabel("block (shaded: fused by fastdw into one inverted-residual kernel chain)")
    title = (f"MODELLED, not measured: {tr.model}, batch {tr.batch}, "
             f"{tr.resolution}x{tr.resolution}, {report.dtype}. Bytes (b)/(c) "
             f"{report.total_bytes('folded') / report.total_bytes('fastdw'):.1f}x, "
             f"(a)/(c) {report.total_bytes('eager') / report.total_bytes('fastdw'):.1f}x")
    top.set_title(title, fontsize=10)
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Title": title})  # readable without the image
    plt.close(fig)
