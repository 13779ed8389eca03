"""One benchmark process: one provider, alone, over the workloads of a plan.

    python -m fastdw.bench.worker '<plan as JSON>'

Run by fastdw.bench.run, one process per provider per round, so that no other library's thread
pool shares the process (bench/README.md, "Measuring"). Prints one JSON line per workload as
soon as it is timed: the parent draws its progress from them.
"""
import json
import statistics
import sys

import torch

from fastdw.bench import measure
from fastdw.bench import providers as _providers


def workloads(plan):
    """(kind, workload) in the plan's order: whole models, then depthwise layers; on a CUDA
    device ("gpu") whole models only, in the plan's GPU dtype."""
    if plan["device"] == "cuda":
        from fastdw.bench import gpu
        for model in plan["models"]:
            for batch in plan["batches"]:
                yield "gpu", gpu.model_workload(model, batch, plan["dtype"])
        return
    for model in plan["models"]:
        for batch in plan["batches"]:
            yield "model", _providers.model_workload(model, batch)
    layers = _providers.depthwise_layers(tuple(plan["layer_models"]))[:plan["max_layers"]]
    for batch in plan["layer_batches"]:
        for layer in layers:
            yield "layer", _providers.op_workload(layer, batch)


def provider_named(name, kind):
    table = _providers.MODEL_PROVIDERS if kind == "model" else _providers.OP_PROVIDERS
    return next((p for p in table if p.name == name), None)


def time_one(plan, kind, workload):
    """The result row of plan["provider"] on one workload (a note instead of times when the
    provider does not run it)."""
    row = dict(kind=kind, name=workload.about.get("model") or workload.about["shape"],
               batch=workload.about["batch"], provider=plan["provider"])
    provider = provider_named(plan["provider"], kind)
    if provider is None:
        return dict(row, note=f"skipped: {plan['provider']} has no {kind}-level form")
    ready, notes, diffs = measure.build_all(workload, [provider], plan["warmup"])
    if provider.name in notes:
        return dict(row, note=notes[provider.name])
    seconds = measure.time_alternating(ready, plan["reps"], seed=0, burst=plan["burst"],
                                       max_seconds=plan["max_seconds"])[provider.name]
    return dict(row, **_stats([t * 1e3 for t in seconds]), max_abs_diff=diffs[provider.name])


def time_gpu(plan, workload):
    """The result row of plan["provider"] on one GPU workload: device time from CUDA events,
    each call after an L2 flush (fastdw.bench.gpu, as bench/gpu times)."""
    from fastdw.bench import gpu
    row = dict(kind="gpu", name=workload.about["model"], batch=workload.about["batch"],
               provider=plan["provider"], dtype=workload.dtype)
    provider = next(p for p in gpu.PROVIDERS if p.name == plan["provider"])
    try:
        fn, x = provider.build(workload)
    except (_providers.Unavailable, ImportError) as why:
        return dict(row, note=f"skipped: {why}")
    with torch.no_grad():
        for _ in range(plan["warmup"]):
            out = fn(x)
        torch.cuda.synchronize()
        error = gpu.relative_error(out, workload.oracle())
        if not error <= gpu.TOLERANCE[workload.dtype]:
            return dict(row, note=f"failed: relative error {error:.3g} against stock eager")
        timed, times = gpu.event_timer(fn, x)
        flush = gpu.l2_flusher()
        for _ in range(plan["reps"]):
            flush()
            timed()
    return dict(row, **_stats(times), relative_error=error)


def _stats(ms):
    q1, _, q3 = statistics.quantiles(ms, n=4)
    return dict(median_ms=statistics.median(ms), min_ms=min(ms), iqr_ms=q3 - q1, calls=len(ms))


def main(argv=None):
    plan = json.loads((argv or sys.argv[1:])[0])
    _providers.setup(plan["threads"])
    for kind, workload in workloads(plan):
        row = time_gpu(plan, workload) if kind == "gpu" else time_one(plan, kind, workload)
        print(json.dumps(row), flush=True)
    print(json.dumps({"threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
