"""Judge a saved GPU benchmark run against fastdw's design targets.

    python bench/gpu/compare_gpu.py .benchmarks/<machine>/0001_gpu.json

Reads the CUDA-event medians (extra_info["cuda_event_ms"]["median"]) that bench/gpu stores per
benchmark, and prints one markdown row per group (one workload, every provider): stock eager NCHW,
eager channels_last, torch.compile max-autotune, then each fastdw provider (fastdw_triton,
fastdw_cuda) with its speedups. Targets (bench/gpu/README.md), per fastdw provider:
dwconv_bn_act >= 2x PyTorch's best eager layout; mobilenet_v2 fp16 batch 256 >= 1.5x
torch.compile. A provider without a figure (skipped: its backend could not run) says so;
nothing is invented.
"""
import argparse
import json

from fastdw.bench.gpu import FASTDW_PROVIDERS

STOCK_LAYOUTS = ("eager", "eager_cl")
COMPILE = "compile_max_autotune"


def target(group):
    """(what the speedup is measured against, required speedup) or None for no target."""
    if group.startswith("dwconv_bn_act "):
        return "best eager layout", 2.0
    if group == "mobilenet_v2 fp16 b256":
        return "torch.compile", 1.5
    return None


def medians(benchmarks):
    """{group: {provider: CUDA-event median ms}}."""
    out = {}
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        event = info.get("cuda_event_ms")
        if event:
            out.setdefault(bench["group"], {})[info["provider"]] = event["median"]
    return out


def rows(by_group):
    """One markdown row per group: the stock providers' medians, then per fastdw provider its
    median, its speedups over the best eager layout and over torch.compile, and its verdict."""
    head = ["group", "eager ms", "eager_cl ms", "max-autotune ms"]
    for name in FASTDW_PROVIDERS:
        head += [f"{name} ms", f"{name} x best eager layout", f"{name} x compile"]
    lines = ["| " + " | ".join(head + ["target"]) + " |", "|---" * (len(head) + 1) + "|"]
    for group, ms in by_group.items():
        layouts = [ms[p] for p in STOCK_LAYOUTS if p in ms]
        goal = target(group)
        cells = [f"{ms[p]:.4f}" if p in ms else "-" for p in (*STOCK_LAYOUTS, COMPILE)]
        verdicts = []
        for name in FASTDW_PROVIDERS:
            fast = ms.get(name)
            vs_layout = min(layouts) / fast if fast and layouts else None
            vs_compile = ms[COMPILE] / fast if fast and COMPILE in ms else None
            cells += [f"{fast:.4f}" if fast else "-",
                      *(f"{r:.2f}x" if r else "-" for r in (vs_layout, vs_compile))]
            if goal is not None:
                got = vs_layout if goal[0] == "best eager layout" else vs_compile
                verdicts.append(f"{name} " + ("no figure" if got is None else "met"
                                              if got >= goal[1] else "not met"))
        verdict = f">= {goal[1]:g}x vs {goal[0]}: " + ", ".join(verdicts) if goal else ""
        lines.append(f"| {group} | " + " | ".join(cells + [verdict]) + " |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="a pytest-benchmark JSON file (--benchmark-save/--json)")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    by_group = medians(data["benchmarks"])
    if not by_group:
        raise SystemExit(f"{args.json} holds no CUDA-event timings (was it a bench/gpu run?)")
    print("\n".join(rows(by_group)))


if __name__ == "__main__":
    main()
