"""Per-call cost of fastdw's public ops where the kernel does almost nothing: the op's Python
(argument checks, the dispatch to a backend) plus the C++ entry point's own checks.

    python bench/op_overhead.py --threads 1 --rounds 7

Each op runs on a tiny input (batch 1, 16 channels, 4x4 pixels, float32, channels_last) on the
cpp backend under no_grad, as a user calls it: the public function with its weights as a
MobileNet layer holds them (4-D 1x1 conv weights, folded BN vectors), and a block once more with
2-D 1x1 weights. The kernels' arithmetic at
this size takes a few microseconds, so differences between two fastdw versions are differences
in per-call overhead. Only the public API is used, so the same command runs on any version of
fastdw (run it with PYTHONPATH pointing at each checkout, in alternation).

Printed: per op, the minimum over rounds of each round's median CPU time per call (over
batches of 50 calls; `--calls` calls per round), in microseconds.
"""
import argparse
import statistics
import time

import torch

import fastdw


def cases(backend):
    """(name, zero-argument call) per op at the tiny size, on `backend`."""
    c, hidden, hw = 16, 64, 4
    x = torch.randn(1, c, hw, hw).contiguous(memory_format=torch.channels_last)

    def affine(n):
        return torch.rand(n) + 0.5, torch.randn(n)

    dw_w, pw_w = torch.randn(c, 1, 3, 3), torch.randn(c, c, 1, 1)
    expand_w, block_dw_w = torch.randn(hidden, c, 1, 1), torch.randn(hidden, 1, 3, 3)
    project_w = torch.randn(c, hidden, 1, 1)
    block = (expand_w, *affine(hidden), block_dw_w, *affine(hidden), project_w, *affine(c))
    se = dict(se_w1=torch.randn(8, hidden, 1, 1), se_b1=torch.randn(8),
              se_w2=torch.randn(hidden, 8, 1, 1), se_b2=torch.randn(hidden))
    # The same block with its 1x1 weights as (C_out, C_in) matrices, as the README's API tour
    # writes them.
    block_2d = tuple(w.flatten(1) if w.dim() == 4 and w.shape[2:] == (1, 1) else w
                     for w in block)
    dw_affine, pw_affine = affine(c), affine(c)
    ops = fastdw.ops
    return [
        ("dwconv_bn_act", lambda: ops.dwconv_bn_act(x, dw_w, *dw_affine, act="relu6",
                                                    backend=backend)),
        ("pwconv_bn_act", lambda: ops.pwconv_bn_act(x, pw_w, *pw_affine, act="relu6",
                                                    backend=backend)),
        ("inverted_residual", lambda: ops.inverted_residual(x, *block, stride=1,
                                                            backend=backend)),
        ("inverted_residual 2-D", lambda: ops.inverted_residual(x, *block_2d, stride=1,
                                                                backend=backend)),
        ("inverted_residual+se", lambda: ops.inverted_residual(x, *block, stride=1,
                                                               act="hardswish", backend=backend,
                                                               **se)),
    ]


def per_call_us(call, calls, batch=50):
    """Median over batches of `batch` calls of the process's CPU time per call. CPU time, not
    wall time: on a shared machine wall time also counts the waits for a free core, which
    here would be larger than the differences being measured (one thread: the kernels run
    inline, so the process's CPU time is this call's)."""
    times = []
    for _ in range(max(1, calls // batch)):
        start = time.process_time_ns()
        for _ in range(batch):
            call()
        times.append((time.process_time_ns() - start) / batch)
    return statistics.median(times) / 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"fastdw from {fastdw.__file__}; torch {torch.__version__}; {args.threads} thread(s); "
          f"float32, batch 1, 16 channels, 4x4; CPU time per call, median of {args.calls} calls, "
          f"min of {args.rounds} rounds")
    with torch.no_grad():
        torch.manual_seed(0)
        calls = cases("cpp")
        torch.manual_seed(0)
        for (name, call), (_, reference) in zip(calls, cases("reference")):
            # the first call also packs the weights
            out, expected = call(), reference()
            error = ((out - expected).norm() / expected.norm()).item()
            assert error < 1e-5, f"{name}: cpp differs from reference by {error:.2e} (relative)"
        results = {name: [] for name, _ in calls}
        for _ in range(args.rounds):
            for name, call in calls:  # interleaved, so drift reaches every op alike
                results[name].append(per_call_us(call, args.calls))
    for name, values in results.items():
        print(f"{name:24s} {min(values):8.2f} us/call (CPU)")


if __name__ == "__main__":
    main()
