"""Whole-model latency with every provider alone in its own process, processes taking turns.

    python bench/separate_processes.py --models mobilenet_v2 mobilenet_v3_large mobilenet_v3_small \
        --batch 1 8 --threads 2 --rounds 5 --providers ort fastdw_cpp fastdw_frozen

compare_cpu.py times providers side by side in one process. On the VMs this project runs on
that flatters fastdw against ONNX Runtime (ORT is slower in a process that also runs torch),
and a single process can land in a slow period: the second vCPU is intermittently not available,
and a 2-thread run then takes as long as a 1-thread run, for minutes at a time. So here each
round starts one process per (model, provider), running `compare_cpu.py --burst 5` (steady
state) for that provider alone, and the rounds interleave the providers in time. The table
lists each process's median, and the ratio to ORT of the per-provider minimums (each provider
at its best: what the hardware allows) and of the medians of those medians.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

from fastdw.bench import providers as _providers

HERE = os.path.dirname(os.path.abspath(__file__))
ROW = re.compile(r"\| (\S+) \| (\d+) \| (\S+) \| ([\d.]+) \|")
LOAD = re.compile(r"(?:at start|at end) ([\d.]+) /")  # 1-minute load averages


def one_process(model, batches, threads, provider):
    """{(model, batch, provider): median ms} of one compare_cpu.py process, and its header."""
    cmd = [sys.executable, os.path.join(HERE, "compare_cpu.py"), "--models", model, "--batch",
           *map(str, batches), "--threads", str(threads), "--burst", "5", "--providers",
           provider]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    found = {(m[1], int(m[2]), m[3]): float(m[4]) for m in map(ROW.match, out.splitlines()) if m}
    loads = [float(v) for v in LOAD.findall(out)]
    return found, out.splitlines()[:2], loads


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
    times = {}  # (model, batch, provider) -> [median ms of each process]
    header, loads = None, []
    for r in range(args.rounds):
        for model in args.models:
            for provider in args.providers:
                print(f"round {r + 1}/{args.rounds}: {model} {provider}", file=sys.stderr,
                      flush=True)
                found, lines, process_loads = one_process(model, args.batch, args.threads,
                                                          provider)
                header = header or lines
                loads += process_loads
                for key, ms in found.items():
                    times.setdefault(key, []).append(ms)
    print(header[0])
    print(f"{args.rounds} processes per provider and model, in turns; each process: "
          f"{header[1].split(', load average')[0]}; 1-minute load average "
          + (f"{min(loads):.1f}-{max(loads):.1f}" if loads else "not reported"))
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
