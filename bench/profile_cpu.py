"""Where fastdw's cpp backend spends a MobileNet forward on CPU.

    python bench/profile_cpu.py --models mobilenet_v2 mobilenet_v3_large --batch 1 8 --threads 2

Part 1 (torch.profiler over --iters forwards of the whole fastdw model, cpp backend,
channels_last, module by module: `model._forward_modules`, because the one C++ program that
`model(x)` runs under no_grad calls the same kernels without the dispatcher events a profile
needs): self + child time per op group, ms per forward. `fastdw::<op>` is the public Python
custom op (validation, dispatch, backend lookup) and `fastdw_cpp::<op>` the C++ kernel inside
it; their difference is the Python/custom-op overhead, shown per call (under no_grad the
fastdw.nn modules call the C++ kernels directly once their arguments have passed the public op,
so a model forward shows only `fastdw_cpp::<op>` rows). Profiler instrumentation itself adds a
few us per event, so totals are above compare_cpu.py's.

Part 2 (--blocks): each feature block of the model timed alone on its real input, fastdw cpp
against torch.compile + freezing of the stock torchvision block on channels_last (median of
--iters alternated calls), to show which blocks lose and by how much.
"""
import argparse
import collections
import copy
import os
import statistics
import time

import torch

from fastdw.bench import providers as _providers

import fastdw
import fastdw.kernels.cpp  # loads fastdw._C
import fastdw.models


def fastdw_model(stock):
    model = getattr(fastdw.models, stock.name)()
    model.load_state_dict(stock.state_dict(), strict=True)
    return model.eval().to(memory_format=torch.channels_last)


def group_of(name):
    """Row label of a profiler event, or None for events counted inside another row."""
    if name.startswith(("fastdw::", "fastdw_cpp::")):
        return name
    top = {"aten::conv2d": "aten::conv2d (stem / last conv)", "aten::linear": "aten::linear",
           "aten::adaptive_avg_pool2d": "aten::adaptive_avg_pool2d",
           "aten::hardswish": "aten::hardswish", "aten::hardswish_": "aten::hardswish",
           "aten::relu6": "aten::relu6 / hardtanh", "aten::hardtanh": "aten::relu6 / hardtanh",
           "aten::hardtanh_": "aten::relu6 / hardtanh", "aten::batch_norm": "aten::batch_norm",
           "aten::flatten": "aten::flatten", "aten::dropout": "aten::dropout"}
    return top.get(name)


def inside_aten_row(ev):
    parent = ev.cpu_parent
    while parent is not None:
        if (group_of(parent.name) or "").startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def profile_model(stock, x, iters):
    forward = fastdw_model(stock)._forward_modules
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), fastdw.use_backend("cpp"):
        for _ in range(3):
            forward(x)
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(iters):
                forward(x)
        wall = (time.perf_counter() - t0) * 1e3 / iters
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            forward(x)
            times.append(time.perf_counter() - t)
    rows = collections.defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        g = group_of(ev.name)
        if g is None or (g.startswith("aten::") and inside_aten_row(ev)):
            continue  # e.g. aten::hardtanh_ under aten::relu6: counted with its caller
        rows[g][0] += ev.cpu_time_total / 1e3 / iters
        rows[g][1] += 1
    for row in rows.values():
        row[1] //= iters
    return rows, wall, statistics.median(times) * 1e3


def print_profile(name, b, rows, wall, plain):
    print(f"\n### {name} batch {b}: profiled {wall:.2f} ms/forward, unprofiled median "
          f"{plain:.2f} ms\n")
    print("| op | calls/forward | ms/forward | % of profiled | us/call |")
    print("|---|---|---|---|---|")
    for g, (ms, n) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        print(f"| {g} | {n} | {ms:.2f} | {100 * ms / wall:.0f}% | {1e3 * ms / max(n, 1):.0f} |")
    for op in ("inverted_residual", "pwconv_bn_act", "dwconv_bn_act"):
        outer, inner = rows.get(f"fastdw::{op}"), rows.get(f"fastdw_cpp::{op}")
        if outer and inner and outer[1]:
            print(f"| overhead fastdw::{op} - kernel | {outer[1]} | {outer[0] - inner[0]:.2f} | "
                  f"{100 * (outer[0] - inner[0]) / wall:.0f}% | "
                  f"{1e3 * (outer[0] - inner[0]) / outer[1]:.0f} |")


def block_table(stock, x, iters):
    """Per feature block: (label, cpp ms, compile ms)."""
    fd = fastdw_model(stock)
    st = copy.deepcopy(stock).to(memory_format=torch.channels_last)
    h = x.contiguous(memory_format=torch.channels_last)
    out = []
    with torch.no_grad():
        for i, (fb, sb) in enumerate(zip(fd.features, st.features)):
            torch._dynamo.reset()
            comp = torch.compile(sb, fullgraph=True, dynamic=False)

            def cpp(inp, fb=fb):
                with fastdw.use_backend("cpp"):
                    return fb(inp)
            fns = {"cpp": cpp, "compile": comp}
            ref = sb(h)
            for fn in fns.values():
                for _ in range(3):
                    y = fn(h)
                err = ((y - ref).norm() / ref.norm()).item()
                assert err < 1e-4, f"block {i}: relative error {err:.1e}"
            ts = {k: [] for k in fns}
            for _ in range(iters):
                for k, fn in fns.items():
                    t = time.perf_counter()
                    fn(h)
                    ts[k].append(time.perf_counter() - t)
            label = (f"{i} {type(fb).__name__} {h.shape[1]}->{ref.shape[1]} "
                     f"{h.shape[2]}x{h.shape[3]}->{ref.shape[2]}x{ref.shape[3]}")
            out.append((label, *(statistics.median(ts[k]) * 1e3 for k in fns)))
            h = ref.contiguous(memory_format=torch.channels_last)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "mobilenet_v3_large"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--blocks", action="store_true", help="also time each block alone")
    args = parser.parse_args()
    _providers.setup(args.threads)
    print(f"threads {torch.get_num_threads()}, float32, 224x224, torch {torch.__version__}, "
          f"fastdw cpp: {torch.ops.fastdw_cpp.capability()}, load average "
          f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())}")
    for name in args.models:
        for b in args.batch:
            wl = _providers.model_workload(name, b)
            stock = wl.stock_module()
            stock.name = name
            rows, wall, plain = profile_model(stock, wl.x, args.iters)
            print_profile(name, b, rows, wall, plain)
            if args.blocks:
                print(f"\n#### {name} batch {b}: per block, median ms\n")
                print("| block | fastdw cpp | compile-cl | cpp / compile |")
                print("|---|---|---|---|")
                tot = [0.0, 0.0]
                for label, c, k in block_table(stock, wl.x, args.iters):
                    tot[0] += c
                    tot[1] += k
                    print(f"| {label} | {c:.3f} | {k:.3f} | {c / k:.2f} |", flush=True)
                print(f"| sum | {tot[0]:.2f} | {tot[1]:.2f} | {tot[0] / tot[1]:.2f} |")


if __name__ == "__main__":
    main()
