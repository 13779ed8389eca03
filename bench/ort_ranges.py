"""Where fastdw gains or loses against ONNX Runtime inside a model: consecutive ranges of feature
blocks, and the head, each timed side by side with ONNX Runtime in one process.

    python bench/ort_ranges.py --models mobilenet_v3_large mobilenet_v3_small --batch 1 --threads 2

Each range (e.g. features[0:4]) is exported on its own and run as one ONNX Runtime session, so
ORT fuses and lays out the whole range as it would inside the full model; timing ranges one block
at a time instead would add a layout conversion (NCHW <-> ORT's blocked NCHWc) at every session
boundary and flatter fastdw. fastdw runs the same blocks of `fastdw.models.<model>()` (same
weights, BN calibrated as in compare_cpu.py) on a channels_last input, as modules ("fastdw") and
frozen (`fastdw.nn.freeze` of the range: its kernels with no Python between them). The head is
the global average pool plus the classifier (whose Linear layers fastdw's models run as
fastdw.nn.Linear). The three take turns in bursts of 10 calls, the first of each burst untimed
(steady state, as compare_cpu.py's --burst); medians in us; the output check is the larger max
abs difference of the two fastdw forms from stock eager.

Caution: on the 2-core VM this was written on, ONNX Runtime's times inside a process that also
runs torch were well above its times in a process of its own, and varied from run to run; treat
a row where fastdw wins as a lead to check against ORT alone (bench/README.md, "ONNX Runtime in
its own process"), not a result.
"""
import argparse
import io
import os
import statistics
import time

import torch
from torch import nn

from fastdw.bench import providers as _providers

# Feature ranges per model: stem + 112x112/56x56 blocks, 28x28, 14x14, 7x7 (+ last conv).
RANGES = {
    "mobilenet_v2": [(0, 4), (4, 7), (7, 14), (14, 19)],
    "mobilenet_v3_large": [(0, 4), (4, 7), (7, 13), (13, 17)],
    "mobilenet_v3_small": [(0, 2), (2, 4), (4, 9), (9, 13)],
}


class Head(nn.Module):
    """avgpool + flatten + classifier of a torchvision-layout MobileNet."""

    def __init__(self, model):
        super().__init__()
        self.classifier = model.classifier

    def forward(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def frozen(self):
        import fastdw.nn
        return fastdw.nn.freeze(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                              self.classifier))


def ort_session(module, x, threads):
    import onnxruntime
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # a process shared with fastdw: spinning off, see fastdw.bench.providers.ORT_SHARED
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(buf.getvalue(), options,
                                           providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


def bursts(fns, reps, burst=10):
    """Median us per call: rounds of `burst` consecutive calls per provider, the first call of
    each burst untimed (it finds the other provider's cache contents)."""
    times = {name: [] for name in fns}
    with torch.no_grad():
        for _ in range((reps + burst - 2) // (burst - 1)):
            for name, fn in fns.items():
                fn()
                for _ in range(burst - 1):
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) * 1e6 for name, ts in times.items()}


def rows(model_name, batch, threads, reps):
    import fastdw.models
    import fastdw.nn
    x = torch.randn(batch, 3, _providers.IMAGE_SIZE, _providers.IMAGE_SIZE)
    stock = _providers.calibrate_bn(_providers.stock_model(model_name), x)
    ours = getattr(fastdw.models, model_name)()
    ours.load_state_dict(stock.state_dict(), strict=True)
    ours = ours.eval().to(memory_format=torch.channels_last)
    with torch.no_grad():
        inputs = [x]
        for block in stock.features:
            inputs.append(block(inputs[-1]))
    pieces = [(f"features[{lo}:{hi}]", stock.features[lo:hi], ours.features[lo:hi],
               fastdw.nn.freeze(ours.features[lo:hi]), inputs[lo])
              for lo, hi in RANGES[model_name]]
    head = Head(ours)
    pieces.append(("head", Head(stock), head, head.frozen(), inputs[-1]))
    for label, stock_part, our_part, frozen, inp in pieces:
        inp_cl = inp.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            ref = stock_part(inp)
            diff = max((our_part(inp_cl) - ref).abs().max().item(),
                       (frozen(inp_cl) - ref).abs().max().item())
        us = bursts({"ort": ort_session(stock_part, inp, threads),
                     "fastdw": lambda p=our_part, i=inp_cl: p(i),
                     "frozen": lambda f=frozen, i=inp_cl: f(i)}, reps)
        yield (f"| {model_name} | {batch} | {label} | {tuple(inp.shape)} | {us['ort']:.0f} | "
               f"{us['fastdw']:.0f} | {us['frozen']:.0f} | {us['fastdw'] / us['ort']:.2f}x | "
               f"{us['frozen'] / us['ort']:.2f}x | {diff:.1e} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(RANGES), choices=list(RANGES))
    parser.add_argument("--batch", nargs="+", type=int, default=[1])
    parser.add_argument("--threads", type=int, default=_providers.DEFAULT_THREADS)
    parser.add_argument("--reps", type=int, default=200, help="timed calls each; default 200")
    args = parser.parse_args(argv)
    _providers.setup(args.threads)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{torch.get_num_threads()} threads, float32, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
          f"load average {load}; median us of about {args.reps} calls in bursts of 10")
    print()
    print("| model | batch | range | input | ORT us | fastdw us | frozen us | fastdw / ORT | "
          "frozen / ORT | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model_name in args.models:
        for batch in args.batch:
            for row in rows(model_name, batch, args.threads, args.reps):
                print(row, flush=True)


if __name__ == "__main__":
    main()
