"""GPU timing for pytest-benchmark: CUDA events around each run, an L2 flush before it.

Options: --gpu-rounds=N timed runs per benchmark (default 50), --gpu-warmup=N untimed runs
first (default 10; they also compile / autotune). bench/conftest.py (the CPU suite's) is loaded
too: it registers the markers and sets inductor freezing.
"""
import statistics

import pytest
import torch

from fastdw.bench import gpu as _gpu
from fastdw.bench.providers import Unavailable


def pytest_addoption(parser):
    group = parser.getgroup("fastdw GPU bench")
    group.addoption("--gpu-rounds", type=int, default=50, help="timed runs per benchmark")
    group.addoption("--gpu-warmup", type=int, default=10, help="untimed runs before timing")


@pytest.fixture(scope="session")
def l2_flush():
    return _gpu.l2_flusher()


@pytest.fixture
def run_gpu(benchmark, l2_flush, request):
    """Check `provider` against stock eager on `workload`, then time it.

    pytest-benchmark's own statistics are the host wall time of one synchronised call (launch
    overhead included: what a caller waiting for the result sees). The device time of the same
    runs, from CUDA events, goes to extra_info["cuda_event_ms"] (median, min, max); the design
    targets in bench/gpu/README.md are judged on the CUDA-event medians.
    """
    rounds = request.config.getoption("--gpu-rounds")
    warmup = request.config.getoption("--gpu-warmup")

    def run(workload, provider):
        try:
            fn, x = provider.build(workload)
        except (Unavailable, ImportError) as why:
            pytest.skip(f"{provider.name}: {why}")
        with torch.no_grad():
            for _ in range(warmup):
                out = fn(x)
            torch.cuda.synchronize()
            error = _gpu.relative_error(out, workload.oracle())
            assert error <= _gpu.TOLERANCE[workload.dtype], (
                f"{provider.name} on {workload.name}: relative error {error:.3g} vs stock eager")
            timed, times = _gpu.event_timer(fn, x)
            benchmark.group = workload.group
            benchmark.pedantic(timed, setup=l2_flush, rounds=rounds, iterations=1)
        benchmark.extra_info.update(
            workload.about, provider=provider.name, provider_about=provider.about,
            stock=provider.stock, dtype=workload.dtype, relative_error=error,
            cuda_event_ms={"median": statistics.median(times), "min": min(times),
                           "max": max(times), "rounds": len(times)},
            l2_flush_bytes=_gpu.L2_FLUSH_BYTES, device=torch.cuda.get_device_name(),
            torch=torch.__version__, cuda=torch.version.cuda)
    return run
