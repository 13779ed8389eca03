"""How the benchmarks build, check and time a provider, and what they record about the machine.

Shared by `python -m fastdw bench` (fastdw.bench.run) and bench/compare_cpu.py.
"""
import gc
import importlib.metadata
import os
import platform
import random
import subprocess
import time
import traceback

import torch

from fastdw.bench import providers as _providers

# Packages whose versions every record names; absent ones are recorded as absent.
PACKAGES = ("torch", "torchvision", "triton", "onnxruntime", "openvino", "onnx", "numpy")


def cpu_model() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                    if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_flags() -> list:
    """The CPU's feature flags as the kernel lists them (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next(line for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(line.split(":", 1)[1].split())


def package_versions() -> dict:
    """{package: version or None}, read from the installed metadata (nothing is imported)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def fastdw_record() -> dict:
    """fastdw's version, usable backends, the ops its kill switch sends to stock PyTorch (every
    fastdw column then times reference for them) and the C++ kernels' instruction set."""
    try:
        import fastdw
    except ImportError as err:
        return {"error": f"fastdw not importable: {err}"}
    rows = fastdw.info()
    record = {"version": fastdw.__version__,
              "usable_backends": [name for name, row in rows.items() if row["usable"]],
              "disabled_ops": sorted(fastdw.disabled_ops())}
    if rows["cpp"]["usable"]:
        import fastdw.kernels.cpp
        record["cpp_capability"] = fastdw.kernels.cpp.capability()
    return record


def versions() -> str:
    """One line: the versions that matter for a figure (compare_cpu.py's header)."""
    found = [f"{name} {version}" for name, version in package_versions().items()
             if version is not None and name in ("torch", "torchvision", "onnxruntime",
                                                 "openvino")]
    fastdw = fastdw_record()
    disabled = fastdw.get("disabled_ops") and f"; disabled ops: {', '.join(fastdw['disabled_ops'])}"
    found.append(fastdw.get("error") or f"fastdw {fastdw['version']} (usable backends: "
                 f"{', '.join(fastdw['usable_backends'])}{disabled or ''})")
    return ", ".join(found)


def gpus() -> list:
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def build_all(workload, providers, warmup):
    """{provider name: (fn, x)} of the providers that run correctly, {name: note} of the others
    (unavailable, failed, or wrong output) and {name: max abs diff from stock eager}."""
    ready, notes, diffs = {}, {}, {}
    try:
        reference = workload.oracle()
    except _providers.Unavailable as why:  # no stock model to check against: nothing runs
        return ready, {p.name: f"skipped: {why}" for p in providers}, diffs
    for provider in providers:
        try:
            fn, x = provider.build(workload)
            with torch.no_grad():
                for _ in range(warmup):
                    out = fn(x)
            diffs[provider.name] = _providers.max_abs_diff(out, reference)
            _providers.check_close(out, reference, provider.name)
        except _providers.Unavailable as why:
            notes[provider.name] = f"skipped: {why}"
        except Exception as err:  # a broken provider is reported, the others still run
            last = traceback.format_exception_only(err)[-1].strip().splitlines()[0]
            notes[provider.name] = f"failed: {last[:300]}".replace("|", "/")  # table-safe
        else:
            ready[provider.name] = (fn, x)
    return ready, notes, diffs


def time_alternating(ready, reps, seed, burst=1, max_seconds=None, min_reps=5):
    """{name: [seconds per call]}: every repetition runs each provider in a fresh random order,
    `burst` consecutive calls each; with burst > 1 the first call of a burst is not timed, so
    the timed calls find the provider's own weights in cache (steady-state latency) instead of
    whatever the previous provider left there. With `max_seconds`, repetitions stop once that
    much time has passed and `min_reps` are done (slow providers get fewer calls)."""
    times = {name: [] for name in ready}
    order = list(ready)
    rng = random.Random(seed)
    started = time.perf_counter()
    gc.disable()
    try:
        with torch.no_grad():
            for rep in range(reps):
                if (max_seconds is not None and rep >= min_reps
                        and time.perf_counter() - started > max_seconds):
                    break
                rng.shuffle(order)
                for name in order:
                    fn, x = ready[name]
                    if burst > 1:
                        fn(x)
                    for _ in range(max(1, burst - 1)):
                        start = time.perf_counter()
                        fn(x)
                        times[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return times


def load_average() -> list:
    return [round(v, 2) for v in os.getloadavg()]
