"""`python -m fastdw bench`: the comparisons this machine can run, each provider alone in its own
process, in turns, written up as a dated folder (fastdw.bench.report).

A round starts one process per provider (fastdw.bench.worker) that times every workload of the
plan that provider runs: whole models, then depthwise layers. Rounds take the providers in a
rotated order, and each figure is the best of a provider's process medians (bench/README.md,
"Measuring").
"""
import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import time

import torch

from fastdw import perfmodel
from fastdw.bench import gpu, measure, report
from fastdw.bench import providers as _providers


@dataclasses.dataclass
class Plan:
    models: list
    batches: list
    layer_models: list         # the depthwise layers of these models are timed one by one
    layer_batches: list
    rounds: int                # processes per provider, in turns
    reps: int                  # bursts per workload (fewer once max_seconds have passed)
    burst: int                 # calls per burst; the first is untimed (steady state)
    max_seconds: float         # per workload, once 5 bursts are done
    providers: list
    layer_providers: list
    threads: int = _providers.DEFAULT_THREADS
    warmup: int = 3
    max_layers: int = None     # the first N distinct layers only (None: all)
    modelled: tuple = ("mobilenet_v2",)   # models whose GPU traffic is modelled
    modelled_batch: int = 32
    modelled_dtype: str = "fp16"
    gpu_providers: list = None  # where a CUDA device is present; None: all of fastdw.bench.gpu
    gpu_batches: tuple = (1, 32)
    gpu_dtype: str = "fp16"

    def worker_plan(self, provider, device="cpu"):
        """What one worker process of `provider` times on `device`."""
        common = dict(provider=provider, device=device, threads=self.threads,
                      warmup=self.warmup, reps=self.reps, burst=self.burst,
                      max_seconds=self.max_seconds, max_layers=self.max_layers)
        if device == "cuda":
            return dict(common, models=self.models, batches=list(self.gpu_batches),
                        dtype=self.gpu_dtype, layer_models=[], layer_batches=[])
        return dict(common, models=self.models if provider in self.providers else [],
                    batches=self.batches, layer_batches=self.layer_batches,
                    layer_models=self.layer_models if provider in self.layer_providers else [])


def _fastdw_providers():
    """fastdw's own providers: each backend timed on CPU but the reference (the stock-op
    oracle, as slow as eager), then the frozen model."""
    return [p.name for p in _providers.FASTDW if p.name != "fastdw_reference"]


def default_providers():
    """(model-level, layer-level) provider names: stock eager, torch.compile, fastdw, and the
    ONNX Runtime and OpenVINO anchors."""
    fastdw = _fastdw_providers()
    return (["eager", "compile_cl", *fastdw, "fastdw_frozen", "ort", "openvino"],
            ["eager", "compile_cl", *fastdw])


def quick_plan():
    model_level, layer_level = default_providers()
    return Plan(models=["mobilenet_v2"], batches=[1], layer_models=["mobilenet_v2"],
                layer_batches=[1], rounds=1, reps=20, burst=4, max_seconds=1.0,
                providers=model_level, layer_providers=layer_level, max_layers=6)


def full_plan():
    model_level, layer_level = default_providers()
    models = list(_providers.OP_MODELS)
    return Plan(models=models, batches=[1, 8], layer_models=models, layer_batches=[1, 8],
                rounds=2, reps=15, burst=3, max_seconds=1.0, providers=model_level,
                layer_providers=layer_level, modelled=tuple(models))


def why_not(provider):
    """Why `provider` cannot run here without starting a process for it, or None."""
    import fastdw.backend
    modules = {"ort": "onnxruntime", "openvino": "openvino"}
    if provider in modules and importlib.util.find_spec(modules[provider]) is None:
        return f"{modules[provider]} is not installed (pip install {modules[provider]} onnx)"
    backend = {"fastdw_frozen": "cpp"}.get(provider, provider.removeprefix("fastdw_"))
    if provider.startswith("fastdw") and backend not in fastdw.backend.usable("cpu"):
        return f"fastdw backend {backend!r}: {fastdw.backend.info()[backend]['reason']}"
    return None


class Progress:
    """A one-line progress bar on stderr (one line per step where stderr is not a terminal)."""

    def __init__(self, total, stream=sys.stderr):
        self.total, self.done, self.stream = total, 0, stream
        self.started = time.monotonic()
        self.tty = stream.isatty()

    def step(self, what, count=1):
        self.done = min(self.total, self.done + count)
        width = 30
        filled = width * self.done // max(1, self.total)
        elapsed = int(time.monotonic() - self.started)
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"{elapsed // 60}:{elapsed % 60:02d} {what}")
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def measured_steps(plan):
    """How many workloads all rounds of every job time (the progress total)."""
    return plan.rounds * sum(_workload_count(plan, *job) for job in jobs(plan)[0])


def _workload_count(plan, provider, device):
    wp = plan.worker_plan(provider, device)
    layers = _providers.depthwise_layers(tuple(wp["layer_models"]))[:plan.max_layers]
    return len(wp["models"]) * len(wp["batches"]) + len(layers) * len(wp["layer_batches"])


def run_worker(plan, provider, device, on_row):
    """Start one worker process for `provider` on `device`; `on_row(row)` for each result
    line. Returns the threads the worker ran with; raises RuntimeError if it died."""
    cmd = [sys.executable, "-m", "fastdw.bench.worker",
           json.dumps(plan.worker_plan(provider, device))]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        threads = None
        for line in proc.stdout:
            row = json.loads(line)
            if "threads" in row:
                threads = row["threads"]
            else:
                on_row(row)
        err = proc.stderr.read()
    if proc.returncode:
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"worker exited {proc.returncode}: {last}")
    return threads


def jobs(plan):
    """([(provider, device)] to start, {provider: why it cannot run here}): the CPU providers
    that can run, then, where a CUDA device is present, the GPU providers."""
    everyone = list(dict.fromkeys(plan.providers + plan.layer_providers))
    skipped = {p: why for p in everyone if (why := why_not(p))}
    found = [(p, "cpu") for p in everyone if p not in skipped]
    if torch.cuda.is_available():
        names = [p.name for p in gpu.PROVIDERS]
        found += [(p, "cuda") for p in (names if plan.gpu_providers is None
                                         else plan.gpu_providers)]
    return found, skipped


def _label(provider, device):
    return provider if device == "cpu" else f"{provider} on {device}"


def measure_all(plan, progress):
    """Every round of every job: {"rows": [...], "skipped": {provider: why},
    "failed": {provider: why}, "threads": {provider: n}, "loads": [1-minute load averages
    sampled between processes]}."""
    todo, skipped = jobs(plan)
    rows, threads, loads, failed = [], {}, [os.getloadavg()[0]], {}
    for r in range(plan.rounds):
        shift = r % max(1, len(todo))
        for provider, device in todo[shift:] + todo[:shift]:  # a rotated order per round
            label = _label(provider, device)
            got = []

            def on_row(row, r=r, label=label, got=got):
                got.append(dict(row, round=r + 1))
                progress.step(f"round {r + 1}/{plan.rounds} {label}: {row['name']} "
                              f"b{row['batch']}")
            try:
                threads[label] = run_worker(plan, provider, device, on_row)
            except RuntimeError as err:
                failed[label] = str(err)
                progress.step(f"{label} failed",
                              _workload_count(plan, provider, device) - len(got))
            rows += got
            loads.append(os.getloadavg()[0])
    return dict(rows=rows, skipped=skipped, failed=failed, threads=threads, loads=loads)


def machine_record(plan, started, loads, threads):
    return {
        "date_utc": f"{started:%Y-%m-%dT%H:%M:%SZ}",
        "cpu_model": measure.cpu_model(),
        "cpu_flags": measure.cpu_flags(),
        "cpus": os.cpu_count(),
        "threads": plan.threads,
        "threads_per_provider": threads,
        "dtype": "float32",
        "batch": plan.batches,
        "layer_batch": plan.layer_batches,
        "image_size": _providers.IMAGE_SIZE,
        "gpus": measure.gpus(),
        "versions": measure.package_versions(),
        "fastdw": measure.fastdw_record(),
        "python": sys.version.split()[0],
        "load_average_1min": {"min": min(loads), "max": max(loads)},
        "commit": _commit(),
    }


def _commit():
    """The fastdw checkout's commit (with '+changes' for a dirty tree), or None outside one."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, text=True, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+changes" if dirty.strip() else "")


def run(plan, out_root, command):
    """Measure, model and write the report of `command` (as the user typed it); returns the
    report folder."""
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.monotonic()
    progress = Progress(measured_steps(plan) + len(plan.modelled))
    results = measure_all(plan, progress)
    modelled = []
    for name in plan.modelled:
        modelled.append(perfmodel.model(name, plan.modelled_batch, _providers.IMAGE_SIZE,
                                        plan.modelled_dtype))
        progress.step(f"modelled GPU traffic: {name}")
    machine = machine_record(plan, started, results["loads"], results["threads"])
    folder = os.path.join(out_root, f"{started:%Y-%m-%dT%H-%M-%SZ}")
    report.write(folder, plan=plan, command=command, results=results, machine=machine,
                 modelled=modelled, minutes=(time.monotonic() - clock) / 60)
    return folder


def positive_int(text):
    """An argparse type: an int >= 1 (counts of runs, rounds, threads, batch sizes, ...)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="MobileNetV2 and its first 6 depthwise layers at batch 1, one "
                             "process per provider; default: V2, V3-Large, V3-Small and their "
                             "depthwise layers at batch 1 and 8, two processes per provider")
    parser.add_argument("--out", default="bench-results",
                        help="folder that receives the dated report folder (default "
                             "bench-results)")
    parser.add_argument("--models", nargs="+", choices=_providers.MODELS,
                        help="models to time (and whose depthwise layers to time)")
    parser.add_argument("--batch", nargs="+", type=positive_int, help="batch sizes")
    parser.add_argument("--providers", nargs="+", metavar="PROVIDER",
                        choices=list(dict.fromkeys(sum(default_providers(), [])
                                                   + [p.name for p in gpu.PROVIDERS])),
                        help="only these providers (default: all of them)")
    parser.add_argument("--rounds", type=positive_int,
                        help="processes per provider, in turns")
    parser.add_argument("--reps", type=positive_int,
                        help="timed bursts per workload, at most")
    parser.add_argument("--max-layers", type=positive_int,
                        help="time only the first N depthwise layers")
    parser.add_argument("--threads", type=positive_int, default=_providers.DEFAULT_THREADS,
                        help=f"threads of every provider (default {_providers.DEFAULT_THREADS})")


def plan_from(args):
    plan = quick_plan() if args.quick else full_plan()
    if args.models:
        plan.models = list(args.models)
        # the layer table comes from torchvision's models, and it has no MobileNetV1
        plan.layer_models = [m for m in args.models if m in _providers.OP_MODELS]
        plan.modelled = tuple(args.models)
    if args.batch:
        plan.batches = plan.layer_batches = list(args.batch)
    if args.providers:
        plan.providers = [p for p in plan.providers if p in args.providers]
        plan.layer_providers = [p for p in plan.layer_providers if p in args.providers]
        plan.gpu_providers = [p.name for p in gpu.PROVIDERS if p.name in args.providers]
    for name in ("rounds", "reps", "max_layers", "threads"):
        if getattr(args, name) is not None:
            setattr(plan, name, getattr(args, name))
    return plan


def main(args):
    plan = plan_from(args)
    folder = run(plan, args.out, "python -m fastdw " + " ".join(sys.argv[1:]))
    print(f"report: {os.path.join(folder, report.REPORT)}")
    return folder
