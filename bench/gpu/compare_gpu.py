"""Judge a saved GPU benchmark run against fastdw's design targets.

    python bench/gpu/compare_gpu.py .benchmarks/<machine>/0001_gpu.json

Reads the CUDA-event medians (extra_info["cuda_event_ms"]["median"]) that bench/gpu stores per
benchmark, and prints one markdown row per group (one workload, every provider): stock eager NCHW,
eager channels_last, torch.compile max-autotune, fastdw triton, and fastdw's speedups. Targets
(bench/gpu/README.md): dwconv_bn_act >= 2x PyTorch's best eager layout; mobilenet_v2 fp16
batch 256 >= 1.5x torch.compile. A row without a fastdw figure says so; nothing is invented.
"""
import argparse
import json

STOCK_LAYOUTS = ("eager", "eager_cl")
COMPILE = "compile_max_autotune"
FASTDW = "fastdw_triton"


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
    lines = ["| group | eager ms | eager_cl ms | max-autotune ms | fastdw ms | x best eager layout "
             "| x compile | target |", "|---|---|---|---|---|---|---|---|"]
    for group, ms in by_group.items():
        layouts = [ms[p] for p in STOCK_LAYOUTS if p in ms]
        fast = ms.get(FASTDW)
        vs_layout = min(layouts) / fast if fast and layouts else None
        vs_compile = ms[COMPILE] / fast if fast and COMPILE in ms else None
        goal = target(group)
        if goal is None:
            verdict = ""
        else:
            got = vs_layout if goal[0] == "best eager layout" else vs_compile
            verdict = (f">= {goal[1]:g}x vs {goal[0]}: "
                       + ("no fastdw figure" if got is None else "met" if got >= goal[1]
                          else "not met"))
        cells = [f"{ms[p]:.4f}" if p in ms else "-" for p in (*STOCK_LAYOUTS, COMPILE, FASTDW)]
        ratios = [f"{r:.2f}x" if r else "-" for r in (vs_layout, vs_compile)]
        lines.append(f"| {group} | " + " | ".join(cells + ratios + [verdict]) + " |")
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
