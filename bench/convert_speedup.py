"""Eval latency on CPU of torchvision and timm models before and after fastdw.convert.

    python bench/convert_speedup.py --threads 1 --batch 1 --dtype float32

Each model is built with random weights (nothing downloads), put in eval mode and converted
(inplace=False); the converted output is checked against the original's. Then both are timed
in one process under torch.no_grad(), each repetition calling the two in a fresh random order
(fastdw.bench.measure.time_alternating), so load from other jobs spreads over both alike.
Prints a markdown table of medians and the speed-up (before / after), with the threads, dtype,
batch, input size, versions, CPU and load average above it. timm models are skipped when timm
is not installed.
"""
import argparse
import statistics
import sys

import torch
import torchvision

import fastdw
from fastdw.bench import measure

MODELS = ["torchvision.mobilenet_v2", "torchvision.mobilenet_v3_large",
          "torchvision.mobilenet_v3_small", "torchvision.efficientnet_b0",
          "torchvision.mnasnet1_0", "timm.mobilenetv3_large_100", "timm.efficientnet_b0",
          "timm.mobilenetv4_conv_small"]


def build(name):
    library, model = name.split(".")
    if library == "timm":
        import timm
        return timm.create_model(model, pretrained=False)
    return getattr(torchvision.models, model)(weights=None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--reps", type=int, default=30, help="timed calls of each, per model")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"fastdw.convert eval latency, CPU: {measure.cpu_model()}, {args.threads} thread(s), "
          f"{args.dtype}, batch {args.batch}, {args.size}x{args.size}, median of {args.reps} "
          f"calls each (alternating, one process)")
    print(f"versions: {measure.versions()}")
    print(f"load average before: {' / '.join(map(str, measure.load_average()))}")
    print(f"command: python bench/convert_speedup.py {' '.join(argv or sys.argv[1:])}\n")
    print("| model | before (ms) | after (ms) | speed-up | converted / left | max rel diff |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        try:
            model = build(name).eval().to(dtype)
        except ImportError as err:
            print(f"| {name} | - | - | - | skipped: {err} | - |")
            continue
        new, report = fastdw.convert(model, return_report=True)
        x = torch.randn(args.batch, 3, args.size, args.size, dtype=dtype)
        with torch.no_grad():
            for _ in range(args.warmup):
                ref, out = model(x), new(x)
        diff = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
        print(f"timing {name}", file=sys.stderr)
        times = measure.time_alternating({"before": (model, x), "after": (new, x)},
                                         args.reps, seed=0)
        before, after = (statistics.median(times[k]) * 1e3 for k in ("before", "after"))
        print(f"| {name} | {before:.2f} | {after:.2f} | {before / after:.2f}x | "
              f"{len(report.converted)} / {len(report.left)} | {diff:.1e} |")
    print(f"\nload average after: {' / '.join(map(str, measure.load_average()))}")


if __name__ == "__main__":
    main()
