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
    """(kind, workload) in the plan's order: whole models, then depthwise layers."""
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
    q1, _, q3 = statistics.quantiles(seconds, n=4)
    return dict(row, median_ms=statistics.median(seconds) * 1e3, min_ms=min(seconds) * 1e3,
                iqr_ms=(q3 - q1) * 1e3, calls=len(seconds), max_abs_diff=diffs[provider.name])


def main(argv=None):
    plan = json.loads((argv or sys.argv[1:])[0])
    _providers.setup(plan["threads"])
    for kind, workload in workloads(plan):
        print(json.dumps(time_one(plan, kind, workload)), flush=True)
    print(json.dumps({"threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
