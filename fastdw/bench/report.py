"""The report folder of `python -m fastdw bench`: report.md, machine.json, results.json and the
plots (latency.png, layers.png, modelled_<model>.png with modelled_<model>.txt)."""
import json
import os

from fastdw.bench import gpu as _gpu
from fastdw.bench import modelled as _modelled
from fastdw.bench import providers as _providers

REPORT, MACHINE, RESULTS = "report.md", "machine.json", "results.json"
LATENCY_PNG, LAYERS_PNG, GPU_PNG = "latency.png", "layers.png", "latency_gpu.png"


def modelled_names(model):
    return f"modelled_{model}.png", f"modelled_{model}.txt"


def best(rows):
    """{(kind, name, batch, provider): the timed row with the lowest median of its processes},
    and {same key: notes of the processes that did not time it}."""
    chosen, notes = {}, {}
    for row in rows:
        key = (row["kind"], row["name"], row["batch"], row["provider"])
        if "median_ms" not in row:
            notes.setdefault(key, []).append(row["note"])
        elif key not in chosen or row["median_ms"] < chosen[key]["median_ms"]:
            chosen[key] = dict(row, process_medians=[])
    for row in rows:
        key = (row["kind"], row["name"], row["batch"], row["provider"])
        if key in chosen and "median_ms" in row:
            chosen[key]["process_medians"].append(row["median_ms"])
    return chosen, notes


def _about(name):
    return next((p.about for p in _providers.MODEL_PROVIDERS + _providers.OP_PROVIDERS
                 if p.name == name), "")


def _is_fastdw(name):
    return name.startswith("fastdw")


def _ms(row):
    return "-" if row is None else f"{row['median_ms']:.2f}"


def _timed(chosen, kind):
    """(models, batches, providers) timed as `kind` ("model" or "gpu"), in the order timed."""
    keys = [k for k in chosen if k[0] == kind]
    return tuple(list(dict.fromkeys(k[i] for k in keys)) for i in (1, 2, 3))


def model_table(chosen, notes, kind="model"):
    """Markdown lines: one row per (model, batch), the best process median of each provider,
    each fastdw provider's speed-up over eager and its ratio to the fastest other provider."""
    models, batches, names = _timed(chosen, kind)
    fastdw = [p for p in names if _is_fastdw(p)]
    head = (["model", "batch"] + [f"{p} ms" for p in names]
            + [f"eager / {p}" for p in fastdw]
            + [f"{p} / fastest other" for p in fastdw])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for model in models:
        for batch in batches:
            got = {p: chosen.get((kind, model, batch, p)) for p in names}
            eager = got.get("eager")
            others = [r["median_ms"] for p, r in got.items() if r and not _is_fastdw(p)]
            cells = [model, str(batch)] + [_ms(got[p]) for p in names]
            for p in fastdw:
                cells.append(f"{eager['median_ms'] / got[p]['median_ms']:.2f}x"
                             if eager and got[p] else "-")
            for p in fastdw:
                cells.append(f"{got[p]['median_ms'] / min(others):.2f}x"
                             if others and got[p] else "-")
            lines.append("| " + " | ".join(cells) + " |")
    lines += _notes(notes, kind)
    return lines


def layer_table(chosen, notes, plan):
    """Markdown lines: per depthwise layer and batch, each provider's best median and its
    speed-up over eager."""
    names = [p for p in plan.layer_providers if any(k[0] == "layer" and k[3] == p
                                                    for k in chosen)]
    faster = [p for p in names if p != "eager"]
    head = ["batch", "layer"] + [f"{p} ms" for p in names] + [f"{p} speed-up" for p in faster]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for batch, layer in _layers(chosen):
        got = {p: chosen.get(("layer", layer, batch, p)) for p in names}
        eager = got.get("eager")
        cells = [str(batch), layer] + [_ms(got[p]) for p in names]
        cells += [f"{eager['median_ms'] / got[p]['median_ms']:.2f}x" if eager and got[p]
                  else "-" for p in faster]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _notes(notes, "layer")
    return lines


def _layers(chosen):
    """(batch, layer name) in the order they were timed."""
    return list(dict.fromkeys((k[2], k[1]) for k in chosen if k[0] == "layer"))


def _notes(notes, kind):
    seen = dict.fromkeys(f"{k[3]} on {k[1]} b{k[2]}: {n}" for k, ns in notes.items()
                         if k[0] == kind for n in ns)
    return ["", *(f"- {line}" for line in seen)] if seen else []


def _kill_switch_warning(machine):
    """Lines saying which ops every fastdw column ran on stock PyTorch (FASTDW_DISABLE_OPS), if
    any: those columns then time reference, not fastdw's kernels."""
    disabled = machine["fastdw"].get("disabled_ops")
    if not disabled:
        return []
    return [f"**The kill switch was on** (FASTDW_DISABLE_OPS): {', '.join(disabled)} ran on "
            "stock PyTorch (the reference backend) in every fastdw column.", ""]


def _setting(machine):
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    return (f"{machine['cpu_model']}, {machine['cpus']} CPUs, {machine['threads']} threads per "
            f"provider, {machine['dtype']}, {machine['image_size']}x{machine['image_size']}, "
            f"{versions}")


def plot_latency(chosen, title, path, kind="model"):
    """Grouped bars: per batch, per model, each provider's best median (ms)."""
    plt = _pyplot()
    models, batches, names = _timed(chosen, kind)
    fig, axes = plt.subplots(max(1, len(batches)), 1, squeeze=False,
                             figsize=(max(7, 2.2 * len(models) * len(names) / 4),
                                      3.6 * max(1, len(batches))))
    width = 0.8 / max(1, len(names))
    for ax, batch in zip(axes[:, 0], batches):
        for j, name in enumerate(names):
            xs, ms = [], []
            for i, model in enumerate(models):
                row = chosen.get((kind, model, batch, name))
                if row:
                    xs.append(i + (j - (len(names) - 1) / 2) * width)
                    ms.append(row["median_ms"])
            bars = ax.bar(xs, ms, width, label=name)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(models)), models)
        ax.set_ylabel(f"ms per batch of {batch} (measured)")
        ax.grid(axis="y", alpha=0.3)
        if names:
            ax.legend(fontsize=8, ncols=2)
    _save(fig, axes, title, path)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def _save(fig, axes, title, path):
    plt = _pyplot()
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Title": title})  # readable without the image
    plt.close(fig)


def plot_layers(chosen, plan, machine, path):
    """Grouped bars: per batch, each depthwise layer's speed-up over eager per provider."""
    plt = _pyplot()
    names = [p for p in plan.layer_providers if p != "eager"
             and any(k[0] == "layer" and k[3] == p for k in chosen)]
    layers = _layers(chosen)
    batches = list(dict.fromkeys(b for b, _ in layers))
    per_batch = max(1, max((sum(b == batch for b, _ in layers) for batch in batches),
                           default=1))
    fig, axes = plt.subplots(max(1, len(batches)), 1, squeeze=False,
                             figsize=(min(16, max(7, 0.3 * per_batch * max(1, len(names)))),
                                      4.2 * max(1, len(batches))))
    width = 0.8 / max(1, len(names))
    for ax, batch in zip(axes[:, 0], batches):
        mine = [layer for b, layer in layers if b == batch]
        for j, name in enumerate(names):
            xs, ups = [], []
            for i, layer in enumerate(mine):
                eager = chosen.get(("layer", layer, batch, "eager"))
                row = chosen.get(("layer", layer, batch, name))
                if eager and row:
                    xs.append(i + (j - (len(names) - 1) / 2) * width)
                    ups.append(eager["median_ms"] / row["median_ms"])
            ax.bar(xs, ups, width, label=name)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_yscale("log")  # ratios: 0.5x and 2x equally far from 1
        ax.set_xticks(range(len(mine)), mine, rotation=60, ha="right", fontsize=6)
        ax.set_ylabel(f"speed-up over eager, batch {batch}")
        ax.grid(axis="y", alpha=0.3)
        if names:
            ax.legend(fontsize=8)
    title = ("Depthwise conv + BN + act per layer, measured: eager time / provider time "
             f"({machine['cpu_model']}, {machine['threads']} threads, {machine['dtype']})")
    _save(fig, axes, title, path)


def write(folder, *, plan, command, results, machine, modelled, minutes):
    """Write the report folder; returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    chosen, notes = best(results["rows"])
    paths = [os.path.join(folder, name) for name in (REPORT, MACHINE, RESULTS, LATENCY_PNG,
                                                     LAYERS_PNG)]
    with open(paths[1], "w") as f:
        json.dump(machine, f, indent=1)
    with open(paths[2], "w") as f:
        json.dump(dict(plan=vars(plan), **results), f, indent=1)
    plot_latency(chosen, f"CPU latency, measured, best of {plan.rounds} process(es) each: "
                 f"{machine['cpu_model']}, {machine['threads']} threads, {machine['dtype']}",
                 paths[3])
    plot_layers(chosen, plan, machine, paths[4])
    gpu_lines = []
    if any(k[0] == "gpu" for k in chosen):
        paths.append(os.path.join(folder, GPU_PNG))
        plot_latency(chosen, f"GPU latency, measured (CUDA events, L2 flushed before each "
                     f"call): {', '.join(machine['gpus'])}, {plan.gpu_dtype}", paths[-1], "gpu")
        gpu_lines = ["## Latency per model (GPU, measured)", "",
                     f"{', '.join(machine['gpus'])}, {plan.gpu_dtype}, device time of "
                     f"{plan.reps} calls per process from CUDA events, the L2 flushed before "
                     "each (fastdw.bench.gpu).", "", f"![GPU latency]({GPU_PNG})", "",
                     *model_table(chosen, notes, "gpu"), ""]
    modelled_lines = []
    for model_report in modelled:
        png, txt = modelled_names(model_report.trace.model)
        _modelled.plot(model_report, os.path.join(folder, png))
        table = _modelled.table(model_report)
        with open(os.path.join(folder, txt), "w") as f:
            f.write("\n".join(table) + "\n")
        paths += [os.path.join(folder, png), os.path.join(folder, txt)]
        modelled_lines += [f"### {model_report.trace.model} (modelled)", "",
                           f"![modelled GPU traffic of {model_report.trace.model}]({png})", "",
                           "```", table[0], *table[-3:], "```", "",
                           f"Per layer and block: [{txt}]({txt}).", ""]
    loads = machine["load_average_1min"]
    calls = plan.reps * (plan.burst - 1)
    lines = [
        f"# fastdw benchmark, {machine['date_utc']}",
        "",
        f"Machine: {_setting(machine)}; 1-minute load average {loads['min']:.1f}-"
        f"{loads['max']:.1f} during the run (other jobs share this machine). Full record: "
        f"[{MACHINE}]({MACHINE}); every process's figures: [{RESULTS}]({RESULTS}).",
        "",
        f"`{command}` at fastdw commit {machine['commit'] or 'unknown'}, {minutes:.1f} min. Each "
        f"provider runs alone in its own process, {plan.rounds} process(es) per provider in "
        f"turns; in each, a workload is built, checked against stock eager, warmed up "
        f"({plan.warmup} calls) and timed in bursts of {plan.burst} consecutive calls, the "
        f"first untimed (steady state), up to {calls} timed calls or {plan.max_seconds:g} s. "
        "A figure is the lowest of its provider's process medians, in ms. ONNX Runtime and "
        "OpenVINO run with their defaults (thread count aside, the same for every provider).",
        "",
        *_kill_switch_warning(machine),
        "## Latency per model (CPU, measured)",
        "",
        f"![latency per model and provider]({LATENCY_PNG})",
        "",
        *model_table(chosen, notes),
        "",
        "## Per-layer speed-up over eager (CPU, measured)",
        "",
        f"Every distinct depthwise conv + BN + activation layer of "
        f"{', '.join(plan.layer_models) or 'no model'} at 224x224 (fastdw.ops.dwconv_bn_act), "
        "speed-up = eager time / provider time.",
        "",
        f"![per-layer speed-up over eager]({LAYERS_PNG})",
        "",
        *layer_table(chosen, notes, plan),
        "",
        *gpu_lines,
        "## Providers",
        "",
        *(f"- `{name}`: {_about(name)}" for name in dict.fromkeys(plan.providers
                                                                  + plan.layer_providers)
          if name not in results["skipped"]),
        *(f"- `{p.name}` on the GPU: {p.about}" for p in _gpu.PROVIDERS
          if any(k[0] == "gpu" and k[3] == p.name for k in chosen)),
        *(f"- `{name}` not run: {why}" for name, why in results["skipped"].items()),
        *(f"- `{name}` failed: {why}" for name, why in results["failed"].items()),
        "",
        "## Modelled GPU traffic (modelled, not measured)",
        "",
        "No GPU ran these figures: fastdw.perfmodel's DRAM bytes and roofline times of a batch "
        f"of {plan.modelled_batch} in {plan.modelled_dtype} on an H100, for (a) stock eager, "
        "(b) BN folded into the convs, (c) the fused-block design, and fastdw's committed "
        "kernels: (d) triton, (e) cuda.",
        "",
        *modelled_lines,
    ]
    with open(paths[0], "w") as f:
        f.write("\n".join(lines))
    return paths

