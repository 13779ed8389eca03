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
