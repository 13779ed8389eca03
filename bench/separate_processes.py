"""Whole-model latency with every provider alone in its own process, processes taking turns.

    python bench/separate_processes.py --models mobilenet_v2 mobilenet_v3_large mobilenet_v3_small \
        --batch 1 8 --threads 2 --rounds 5 --providers ort fastdw_cpp fastdw_frozen

compare_cpu.py times providers side by side in one process. On the VMs this project runs on
that flatters fastdw against ONNX Runtime (ORT is slower in a process that also runs torch),
and a single process can land in a slow period: the second vCPU is intermittently not available,
and a 2-thread run then takes as long as a 1-thread run, for minutes at a time. So here each
round starts one process per provider (fastdw.bench.worker, as `python -m fastdw bench` does)
timing every (model, batch) in steady state (bursts of 5 calls, the first untimed), and the
rounds interleave the providers in time. The table lists each process's median, and the ratio
to the first provider of the per-provider minimums (each provider at its best: what the
hardware allows) and of the medians of those medians.
"""
import argparse
import datetime
import platform
import statistics

from fastdw.bench import measure, run
from fastdw.bench import providers as _providers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(_providers.OP_MODELS),
                        choices=_providers.MODELS)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=_providers.DEFAULT_THREADS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--providers", nargs="+", default=["ort", "fastdw_cpp", "fastdw_frozen"],
                        choices=[p.name for p in _providers.MODEL_PROVIDERS],
                        help="the first is the baseline of the ratios (default ort)")
    args = parser.parse_args(argv)
    plan = run.Plan(models=args.models, batches=args.batch, layer_models=[], layer_batches=[],
                    rounds=args.rounds, reps=20, burst=5, max_seconds=float("inf"),
                    providers=args.providers, layer_providers=[], threads=args.threads,
                    gpu_providers=[])
    started = datetime.datetime.now(datetime.timezone.utc)
    results = run.measure_all(plan, run.Progress(run.measured_steps(plan)))
    times = {}  # (model, batch, provider) -> [median ms of each process]
    for row in results["rows"]:
        if "median_ms" in row:
            times.setdefault((row["name"], row["batch"], row["provider"]), []).append(
                row["median_ms"])
    threads = args.threads
    print(f"machine: {measure.cpu_model()} ({platform.machine()}), {threads} "
          f"thread{'s' if threads > 1 else ''}, float32, batch {' '.join(map(str, args.batch))},"
          f" {_providers.IMAGE_SIZE}x{_providers.IMAGE_SIZE}, {started:%Y-%m-%d %H:%M} UTC, "
          f"{measure.versions()}")
    loads = results["loads"]
    print(f"{args.rounds} processes per provider, in turns; each process: median of "
          f"{plan.reps * (plan.burst - 1)} calls in {plan.reps} bursts of {plan.burst} (first "
          f"call of each burst untimed) after {plan.warmup} warm-up calls; 1-minute load "
          f"average {min(loads):.1f}-{max(loads):.1f}")
    for name, why in {**results["skipped"], **results["failed"]}.items():
        print(f"{name}: {why}")
    base = args.providers[0]
    others = args.providers[1:]
    print()
    print("| model | batch | " + " | ".join(f"{p}, per process (ms)" for p in args.providers)
          + " | " + " | ".join(f"{p} / {base}, minimums" for p in others)
          + " | " + " | ".join(f"{p} / {base}, medians" for p in others) + " |")
    print("|---" * (2 + len(args.providers) + 2 * len(others)) + "|")
    for model in args.models:
        for batch in args.batch:
            runs = [times.get((model, batch, p), []) for p in args.providers]
            if not all(runs):
                missing = [p for p, v in zip(args.providers, runs) if not v]
                print(f"| {model} | {batch} | no result from {', '.join(missing)} "
                      "(run compare_cpu.py for its note) |")
                continue
            cells = [" / ".join(f"{v:.2f}" for v in run) for run in runs]
            mins = [f"{min(run) / min(runs[0]):.2f}x" for run in runs[1:]]
            meds = [f"{statistics.median(run) / statistics.median(runs[0]):.2f}x"
                    for run in runs[1:]]
            print(f"| {model} | {batch} | " + " | ".join(cells + mins + meds) + " |")


if __name__ == "__main__":
    main()
