"""The raw C++ kernels against the float64 reference, on every instruction-set variant.

This process runs the variant the CPU supports best; the lower variants run in subprocesses
(FASTDW_CPU_CAPABILITY selects them, see csrc/cpu/isa/select.cpp), so an AVX-512 machine also
proves the AVX2 and baseline code."""
import os
import subprocess
import sys

import pytest
import torch

import cases

fastdw_C = pytest.importorskip("fastdw._C", reason="fastdw._C is not built")

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = list(cases.all_cases())


@pytest.fixture(autouse=True)
def _poisoned_outputs():
    was = (torch.are_deterministic_algorithms_enabled(),
           torch.utils.deterministic.fill_uninitialized_memory)
    cases.poison_outputs()
    yield
    torch.use_deterministic_algorithms(was[0])
    torch.utils.deterministic.fill_uninitialized_memory = was[1]


@pytest.mark.parametrize("label, runner, case", CASES, ids=[c[0] for c in CASES])
def test_against_reference(label, runner, case):
    problem = cases.check(runner, case)
    assert problem is None, f"{label}: {problem}"


def test_poisoning_reaches_cpp_allocations():
    # The premise of the poisoned-output checks: at::empty inside the C++ ops returns NaN here.
    assert torch.ops.aten.empty.memory_format([4]).isnan().all()


@pytest.mark.parametrize("capability", ["avx2", "baseline"])
def test_lower_instruction_sets(capability):
    env = dict(os.environ, FASTDW_CPU_CAPABILITY=capability)
    run = subprocess.run([sys.executable, os.path.join(HERE, "cases.py")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"capability: {capability}" in run.stdout


def test_capability_is_supported_by_this_cpu():
    cap = torch.ops.fastdw_cpp.capability()
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    assert cap in ("avx512", "avx2", "baseline")
    if cap == "avx512":
        assert " avx512f" in flags and " avx512bw" in flags
    if cap == "avx2":
        assert " avx2" in flags and " fma" in flags


# Shapes big enough that every parallel_for of the kernels splits its range (the cases above are
# mostly below the grain sizes): pwconv over pixels or column panels; inverted_residual over (image, row
# tile) units (N >= 2 * threads), over images with squeeze-excite (gate applied to the project
# weights, or to d when OH*OW <= C_out), and with one unit, where the GEMM panels and depthwise
# rows inside it are split instead.
PARALLEL_CASES = [
    (cases.run_pw, (2, 64, 96, 14, 14, True, "relu6", "channels_last")),
    # one row (a classifier layer at batch 1): split by column panels, the last one narrow
    (cases.run_pw, (1, 576, 1000, 1, 1, False, "hardswish", "nchw")),
    (cases.run_dw, (2, 96, 28, 28, 3, 2, 1, "relu6", "channels_last", torch.float32)),
    (cases.run_ir, (4, 24, 144, 24, 28, 28, 3, 1, "relu6", False, True, "channels_last")),
    (cases.run_ir, (1, 24, 144, 32, 56, 56, 3, 2, "relu6", False, True, "channels_last")),
    (cases.run_ir, (4, 40, 120, 40, 28, 28, 5, 1, "hardswish", True, True, "channels_last")),
    (cases.run_ir, (1, 40, 120, 80, 28, 28, 3, 2, "hardswish", True, True, "nchw")),
    # EfficientNet's squeeze-excite (silu, sigmoid), its gate computed per image by each thread
    (cases.run_ir, (4, 80, 480, 112, 7, 7, 3, 1, "hardswish", True, True, "channels_last", False,
                    "silu", "sigmoid")),
    # bands of rows as units: batch 1 at 56x56, and batch 3 on 2 threads (two bands per image)
    (cases.run_ir, (1, 24, 144, 24, 56, 56, 3, 1, "relu6", False, True, "channels_last")),
    (cases.run_ir, (3, 24, 72, 24, 40, 40, 3, 1, "relu6", False, True, "nchw")),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("runner, case", PARALLEL_CASES,
                         ids=[f"{r.__name__}{c}" for r, c in PARALLEL_CASES])
def test_thread_counts(threads, runner, case):
    was = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        problem = cases.check(runner, case)
    finally:
        torch.set_num_threads(was)
    assert problem is None, f"{threads} threads, {case}: {problem}"


def chunks(n, grain, threads):
    was = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        flat = torch.ops.fastdw_cpp.parallel_chunks(n, grain)
    finally:
        torch.set_num_threads(was)
    return sorted(tuple(flat[i:i + 3]) for i in range(0, len(flat), 3))


def test_parallel_for_uses_every_thread():
    # One chunk per thread, covering [0, n) without overlap, each on its own OpenMP thread (a
    # build where the kernels' parallel_for ran serially gave one chunk on thread 0).
    assert chunks(10, 1, 2) == [(0, 5, 0), (5, 10, 1)]
    assert chunks(10, 4, 2) == [(0, 5, 0), (5, 10, 1)]
    assert chunks(10, 1, 1) == [(0, 10, 0)]
    assert chunks(10, 10, 2) == [(0, 10, 0)]  # not more than the grain: no region opened
    assert chunks(0, 1, 2) == []
