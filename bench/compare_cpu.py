"""Side-by-side CPU latency of whole MobileNets under every provider, in one process.

    python bench/compare_cpu.py --models mobilenet_v2 mobilenet_v3_large mobilenet_v3_small \
        --batch 1 8 --threads 2

For each (model, batch) every provider of _providers.MODEL_PROVIDERS is built, warmed up and
checked against stock eager (a provider whose output is off is reported, never timed); then
each repetition times one call of every provider, in a fresh random order per repetition, so
load from other jobs on a shared machine spreads over all providers alike. Each call then
starts with the caches as the previous provider left them (its weights and buffers, not this
one's); --burst 5 runs five consecutive calls per provider per repetition and times the last
four, the steady-state latency of a model called repeatedly. Prints a markdown
table (stdout) of medians with ratios to the best stock PyTorch path and to ONNX Runtime;
progress goes to stderr.
"""
import argparse
import datetime
import os
import platform
import statistics
import sys

import torch

from fastdw.bench import measure
from fastdw.bench import providers as _providers


def table_rows(model, batch, providers, times, notes, diffs):
    medians = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    stock = [medians[p.name] for p in providers if p.stock and p.name in medians]
    best_stock = min(stock) if stock else None
    ort = medians.get(_providers.ORT.name)
    rows = []
    for provider in providers:
        name = provider.name
        if name not in medians:
            rows.append(f"| {model} | {batch} | {name} | - | - | - | - | - | "
                        f"{_diff(diffs.get(name))} | {notes[name]} |")
            continue
        ms = medians[name]
        q1, _, q3 = statistics.quantiles(times[name], n=4)
        rows.append(f"| {model} | {batch} | {name} | {ms:.2f} | {min(times[name]) * 1e3:.2f} | "
                    f"{(q3 - q1) * 1e3:.2f} | "
                    f"{_ratio(ms, best_stock)} | {_ratio(ms, ort)} | {_diff(diffs[name])} | |")
    return rows


def _load():
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def _ratio(ms, base):
    return "-" if base is None else f"{ms / base:.2f}x"


def _diff(diff):
    return "-" if diff is None else f"{diff:.1e}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(_providers.OP_MODELS),
                        choices=_providers.MODELS)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=_providers.DEFAULT_THREADS)
    parser.add_argument("--reps", type=int, default=20,
                        help="timed calls per provider per (model, batch); default 20")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed calls per provider before timing (compiles); default 3")
    parser.add_argument("--providers", nargs="+",
                        choices=[p.name for p in _providers.MODEL_PROVIDERS],
                        help="only these providers (default: all)")
    parser.add_argument("--burst", type=int, default=1,
                        help="consecutive calls per provider per repetition; above 1 the "
                             "first is untimed (steady state: the provider's weights in "
                             "cache). Default 1: one cold-ish call each, alternating")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.reps < 2:
        parser.error("--reps must be at least 2 (the table shows quartiles)")
    if args.burst < 1:
        parser.error("--burst must be at least 1")

    _providers.setup(args.threads)
    providers = [p for p in _providers.MODEL_PROVIDERS
                 if args.providers is None or p.name in args.providers]
    if len(providers) > 1:
        providers = _providers.sharing_a_process(providers)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = _load()
    loads = [os.getloadavg()[0]]  # 1-minute load average, sampled after each (model, batch)
    rows = []
    for model in args.models:
        for batch in args.batch:
            print(f"{model} batch {batch}", file=sys.stderr, flush=True)
            workload = _providers.model_workload(model, batch, args.seed)
            ready, notes, diffs = measure.build_all(workload, providers, args.warmup)
            times = measure.time_alternating(ready, args.reps, args.seed, args.burst)
            print("  median ms: " + ", ".join(f"{name} {statistics.median(ts) * 1e3:.2f}"
                                              for name, ts in times.items()),
                  file=sys.stderr, flush=True)
            rows += table_rows(model, batch, providers, times, notes, diffs)
            loads.append(os.getloadavg()[0])
    minutes = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() / 60

    threads = torch.get_num_threads()
    print(f"machine: {measure.cpu_model()} ({platform.machine()}), "
          f"{threads} thread{'s' if threads > 1 else ''}, "
          f"float32, batch {' '.join(map(str, args.batch))}, "
          f"{_providers.IMAGE_SIZE}x{_providers.IMAGE_SIZE}, "
          f"{started:%Y-%m-%d %H:%M} UTC, {measure.versions()}")
    timed = (f"{args.reps} alternating calls" if args.burst == 1 else
             f"{args.reps * (args.burst - 1)} calls in {args.reps} alternating bursts of "
             f"{args.burst} (first call of each burst untimed)")
    print(f"median of {timed} after {args.warmup} warm-up calls, "
          f"load average (1/5/15 min) at start {load_start}, at end {_load()} "
          f"({os.cpu_count()} CPUs), run took {minutes:.1f} min")
    if _providers.ORT_SHARED in providers:
        print(f"ort: {_providers.ORT_SHARED.about}; alone in its process it runs with its "
              "defaults (bench/separate_processes.py, python -m fastdw bench)")
    print("fastdw backends not timed on CPU: " + "; ".join(
        f"{name} ({why})" for name, why in _providers.NOT_TIMED_ON_CPU.items()))
    if max(loads) > os.cpu_count() + 1:  # this run itself accounts for up to ~--threads
        print("WARNING: load average well above the CPU count: other jobs took cores during "
              "the run, "
              "which penalises multi-threaded providers (their OpenMP barriers wait for "
              "descheduled threads) far more than single-threaded kernels; rerun on a quiet "
              "machine before drawing conclusions")
    print()
    print("| model | batch | provider | median ms | min ms | IQR ms | x best stock | x ORT "
          "| max abs diff vs eager | note |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("x best stock: median / the fastest of eager, eager_cl, compile_cl for that row "
          "(below 1 = faster). x ORT: median / ORT's.")


if __name__ == "__main__":
    main()
