"""Per-layer CPU latency of fastdw's depthwise conv + BN + ReLU6 against stock PyTorch.

    python bench/cpu_ops.py --batch 1 8 --threads 2            # every MobileNetV2 dw layer
    python bench/cpu_ops.py --batch 1 --blocks                 # + whole inverted-residual blocks
    python bench/cpu_ops.py --batch 1 8 --pointwise            # + every 1x1 conv + BN (+ ReLU6)

Every depthwise shape of MobileNetV2 at 224x224 (fp32). Providers: eager Conv2d -> BatchNorm2d ->
ReLU6 on NCHW and on channels_last, torch.compile with freezing on channels_last (oneDNN's fused
conv + post-ops, the best stock path), fastdw's public op on the cpp and reference backends
(channels_last; under no_grad on cpp it runs the C++ kernel first and checks its arguments in
Python only if the kernel refuses them, see fastdw/ops/dispatch.py; on reference it checks,
then calls the kernel), cpp-kernel, the C++ entry point torch.ops.fastdw_cpp.* alone (its
difference to fastdw-cpp is the op's Python), and fastdw-frozen, the layer as a fastdw.nn
module frozen with fastdw.nn.freeze (the same kernel with no Python between calls in a frozen
model; here one call per layer, so it pays that call's overhead).
Each repetition times one call of every provider, in an order shuffled per repetition (a
provider that always ran after the same one would inherit its state: warm or sleeping
intra-op threads, caches), so load from other jobs on this shared machine spreads over all of
them; medians in ms, and the ratios of fastdw-cpp to
compile-cl (target <= 1.0) and of eager NCHW to fastdw-cpp and to fastdw-frozen (target >= 3x
faster). Outputs are checked against eager before anything is timed.
"""
import argparse
import copy
import datetime
import random
import statistics
import subprocess
import time

import torch
import torch.nn as nn

import fastdw
from fastdw.ops import fold_bn

# (channels, input size, stride) of every depthwise layer of MobileNetV2 at 224x224.
DW_SHAPES = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2),
             (384, 14, 1), (576, 14, 1), (576, 14, 2), (960, 7, 1)]
# (C_in, expansion, C_out, input size, stride) of every distinct inverted-residual block shape.
BLOCK_SHAPES = [(16, 6, 24, 112, 2), (24, 6, 24, 56, 1), (24, 6, 32, 56, 2), (32, 6, 32, 28, 1),
                (32, 6, 64, 28, 2), (64, 6, 64, 14, 1), (64, 6, 96, 14, 1), (96, 6, 96, 14, 1),
                (96, 6, 160, 14, 2), (160, 6, 160, 7, 1), (160, 6, 320, 7, 1)]
# (C_in, C_out, input size, act) of every distinct 1x1 conv of MobileNetV2: the blocks' expand
# (ReLU6) and project (no act) convs, the first block's project, and the last conv before
# the classifier.
PW_SHAPES = sorted({(ci, ci * e, hw, "relu6") for ci, e, _, hw, _ in BLOCK_SHAPES}
                   | {(ci * e, co, hw // s, "none") for ci, e, co, hw, s in BLOCK_SHAPES}
                   | {(32, 16, 112, "none"), (320, 1280, 7, "relu6")},
                   key=lambda shape: (-shape[2], shape[0], shape[1]))


def machine():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines()
                    if l.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return "unknown"


def random_bn(bn):
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn


def compiled(module, x):
    torch._dynamo.reset()
    fn = torch.compile(module)
    fn(x)
    return fn


def dw_providers(c, hw, stride, x):
    m = nn.Sequential(nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False),
                      random_bn(nn.BatchNorm2d(c)), nn.ReLU6()).eval()
    m_cl = copy.deepcopy(m).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    scale, shift = (t.detach() for t in fold_bn(m[1]))
    w = m[0].weight.detach()

    def fastdw_op(backend):
        return lambda: fastdw.ops.dwconv_bn_act(x_cl, w, scale, shift, stride=stride,
                                                backend=backend)
    frozen = fastdw.nn.freeze(nn.Sequential(fastdw.nn.DWConvBNAct.wrap(m[0], m[1], "relu6")))
    return {"eager": lambda: m(x), "eager-cl": lambda: m_cl(x_cl),
            "compile-cl": (lambda f: lambda: f(x_cl))(compiled(m_cl, x_cl)),
            "fastdw-cpp": fastdw_op("cpp"), "fastdw-ref": fastdw_op("reference"),
            "cpp-kernel": lambda: torch.ops.fastdw_cpp.dwconv_bn_act(x_cl, w, scale, shift,
                                                                     stride, 1, 1, "relu6"),
            "fastdw-frozen": lambda: frozen(x_cl)}


def pw_providers(cin, cout, hw, act, x):
    acts = [nn.ReLU6()] if act == "relu6" else []
    m = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), random_bn(nn.BatchNorm2d(cout)),
                      *acts).eval()
    m_cl = copy.deepcopy(m).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    scale, shift = (t.detach() for t in fold_bn(m[1]))
    w = m[0].weight.detach()

    def fastdw_op(backend):
        return lambda: fastdw.ops.pwconv_bn_act(x_cl, w, scale, shift, act=act, backend=backend)
    frozen = fastdw.nn.freeze(nn.Sequential(fastdw.nn.ConvBNAct.wrap(m[0], m[1], act)))
    return {"eager": lambda: m(x), "eager-cl": lambda: m_cl(x_cl),
            "compile-cl": (lambda f: lambda: f(x_cl))(compiled(m_cl, x_cl)),
            "fastdw-cpp": fastdw_op("cpp"), "fastdw-ref": fastdw_op("reference"),
            "cpp-kernel": lambda: torch.ops.fastdw_cpp.pwconv_bn_act(x_cl, w.flatten(1), scale,
                                                                     shift, act, None),
            "fastdw-frozen": lambda: frozen(x_cl)}


def block_providers(cin, e, cout, hw, stride, x):
    hid = cin * e
    conv = lambda i, o, k=1, s=1, g=1: nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False)
    layers = [conv(cin, hid), random_bn(nn.BatchNorm2d(hid)), nn.ReLU6(),
              conv(hid, hid, 3, stride, hid), random_bn(nn.BatchNorm2d(hid)), nn.ReLU6(),
              conv(hid, cout), random_bn(nn.BatchNorm2d(cout))]
    residual = stride == 1 and cin == cout
    seq = nn.Sequential(*layers).eval()
    m = (lambda t: seq(t) + t) if residual else seq
    seq_cl = copy.deepcopy(seq).to(memory_format=torch.channels_last)
    m_cl = (lambda t: seq_cl(t) + t) if residual else seq_cl
    x_cl = x.contiguous(memory_format=torch.channels_last)
    folded = [t.detach() for i in (1, 4, 7) for t in fold_bn(seq[i])]
    ws = [seq[i].weight.detach() for i in (0, 3, 6)]

    def fastdw_op(backend):
        return lambda: fastdw.ops.inverted_residual(
            x_cl, ws[0], *folded[0:2], ws[1], *folded[2:4], ws[2], *folded[4:6], stride=stride,
            residual=residual, backend=backend)
    block = fastdw.nn.InvertedResidual.wrap(nn.Sequential(
        fastdw.nn.ConvBNAct.wrap(seq[0], seq[1], "relu6"),
        fastdw.nn.DWConvBNAct.wrap(seq[3], seq[4], "relu6"), seq[6], seq[7]))
    frozen = fastdw.nn.freeze(nn.Sequential(block))
    return {"eager": lambda: m(x), "eager-cl": lambda: m_cl(x_cl),
            "compile-cl": (lambda f: lambda: f(x_cl))(compiled(m_cl, x_cl)),
            "fastdw-cpp": fastdw_op("cpp"), "fastdw-ref": fastdw_op("reference"),
            "cpp-kernel": lambda: torch.ops.fastdw_cpp.inverted_residual(
                x_cl, [ws[0].flatten(1), *folded[0:2], ws[1], *folded[2:4], ws[2].flatten(1),
                       *folded[4:6], None, None, None, None], stride, "relu6", residual),
            "fastdw-frozen": lambda: frozen(x_cl)}


def measure(providers, iters, warmup=5):
    for fn in providers.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in providers}
    order, shuffle = list(providers.items()), random.Random(0).shuffle
    for _ in range(iters):  # one call of each provider per repetition, in a shuffled order
        shuffle(order)
        for name, fn in order:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def check(providers, tol=1e-4):
    ref = providers["eager"]()
    for name, fn in providers.items():
        err = ((fn() - ref).norm() / ref.norm()).item()
        if not err < tol:
            raise AssertionError(f"{name}: relative error {err:.2e} against eager")


def run(title, shapes, make, label, batches, iters):
    names = ["eager", "eager-cl", "compile-cl", "fastdw-cpp", "fastdw-ref", "cpp-kernel",
             "fastdw-frozen"]
    print(f"\n### {title}\n")
    print("| batch | layer | " + " | ".join(names)
          + " | cpp / compile-cl | eager / cpp | eager / frozen |")
    print("|---" * (len(names) + 5) + "|")
    for b in batches:
        for shape in shapes:
            x = torch.randn(b, shape[0], shape[-2], shape[-2])
            with torch.no_grad():
                providers = make(*shape, x)
                check(providers)
                ms = measure(providers, iters)
            print(f"| {b} | {label(*shape)} | " + " | ".join(f"{ms[n]:.3f}" for n in names)
                  + f" | {ms['fastdw-cpp'] / ms['compile-cl']:.2f} | "
                  f"{ms['eager'] / ms['fastdw-cpp']:.1f}x | "
                  f"{ms['eager'] / ms['fastdw-frozen']:.1f}x |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--blocks", action="store_true",
                        help="also time whole inverted-residual blocks (expand 6, ReLU6)")
    parser.add_argument("--pointwise", action="store_true",
                        help="also time every 1x1 conv + BN (+ ReLU6) of MobileNetV2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import torch._inductor.config as inductor_config
    inductor_config.freezing = True
    cap = fastdw.kernels.cpp.capability() if fastdw.info()["cpp"]["usable"] else "not built"
    print(f"machine: {machine()} | threads: {torch.get_num_threads()} | dtype: float32 | "
          f"batch: {' '.join(map(str, args.batch))} | torch {torch.__version__} | "
          f"fastdw cpp: {cap} | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
          f" | median ms of {args.iters} calls per provider, in shuffled turns")
    run("depthwise 3x3 + BN + ReLU6 (MobileNetV2 layers, 224x224 input)", DW_SHAPES,
        dw_providers, lambda c, hw, s: f"c{c} {hw}x{hw} s{s}", args.batch, args.iters)
    if args.pointwise:
        run("pointwise 1x1 + BN (+ ReLU6) (MobileNetV2 layers, 224x224 input)", PW_SHAPES,
            pw_providers, lambda ci, co, hw, act: f"{ci}->{co} {hw}x{hw} {act}", args.batch,
            args.iters)
    if args.blocks:
        run("inverted-residual blocks (MobileNetV2, expand 6)", BLOCK_SHAPES, block_providers,
            lambda ci, e, co, hw, s: f"{ci}->{ci * e}->{co} {hw}x{hw} s{s}", args.batch,
            args.iters)


if __name__ == "__main__":
    import fastdw.kernels.cpp  # noqa: F401  (capability())
    import fastdw.nn  # freeze, the fused modules
    main()
