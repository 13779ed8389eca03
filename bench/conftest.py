"""pytest-benchmark set-up shared by bench/test_ops.py and bench/test_models.py.

Options: --bench-batch=1,8 (batch sizes, default 1), --bench-threads=N (default 2).
"""
import pytest
import torch

from fastdw.bench import providers as _providers


def pytest_addoption(parser):
    group = parser.getgroup("fastdw bench")
    group.addoption("--bench-batch", default="1",
                    help="comma-separated batch sizes to time (default: 1; e.g. 1,8)")
    group.addoption("--bench-threads", type=int, default=_providers.DEFAULT_THREADS,
                    help=f"torch intra-op threads (default: {_providers.DEFAULT_THREADS})")


def pytest_configure(config):
    _providers.setup(config.getoption("--bench-threads"))


def pytest_generate_tests(metafunc):
    if "batch" in metafunc.fixturenames:
        batches = [int(b) for b in metafunc.config.getoption("--bench-batch").split(",")]
        metafunc.parametrize("batch", batches, ids=[f"b{b}" for b in batches])


@pytest.fixture
def run_provider(benchmark):
    """Time `provider` on `workload` after checking its output against the stock eager one."""
    def run(workload, provider, warmup=3):
        try:
            fn, x = provider.build(workload)
        except _providers.Unavailable as why:
            pytest.skip(str(why))
        benchmark.group = workload.group
        benchmark.extra_info.update(
            workload.about, provider=provider.name, provider_about=provider.about,
            threads=torch.get_num_threads(), dtype="float32", torch=torch.__version__)
        with torch.no_grad():
            for _ in range(warmup):  # the first call compiles / exports / packs weights
                out = fn(x)
            benchmark.extra_info["max_abs_diff"] = _providers.check_close(
                out, workload.oracle(), f"{provider.name} on {workload.name}")
            benchmark(fn, x)
    return run
