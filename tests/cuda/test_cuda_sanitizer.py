"""The CUDA emulator under AddressSanitizer and UndefinedBehaviorSanitizer: every self-test case
(tests/cuda/emulator_main.cpp runs them all, under three seeds, with and without the race
detector) must give its expected outcome with no sanitizer report. This checks the emulator's
own memory handling: fiber stacks and their switches (annotated for ASan), shared-memory
buffers, abandoned fibers after an error. Runs when FASTDW_SANITIZER_TESTS=1 (as CI sets),
skipped otherwise (~20 s to build)."""
import os
import subprocess
import tempfile

import pytest

from fastdw.kernels import cuda
from test_cuda_emulator import CORRECT, PLANTED

HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = pytest.mark.skipif(os.environ.get("FASTDW_SANITIZER_TESTS") != "1",
                                reason="slow; set FASTDW_SANITIZER_TESTS=1 to run")


def test_emulator_under_address_and_undefined_behavior_sanitizers():
    headers = cuda.cuda_headers()
    if headers is None:
        pytest.skip("needs CUDA's headers (cuda_fp16.h): " + str(cuda.HEADER_CANDIDATES))
    with tempfile.TemporaryDirectory() as out:
        exe = os.path.join(out, "emulator_main")
        subprocess.run(["g++", "-std=c++20", "-O1", "-g", "-fno-omit-frame-pointer",
                        "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                        "-I", headers, "-I", cuda.CSRC, os.path.join(HERE, "emulator_main.cpp"),
                        "-o", exe], check=True, capture_output=True, text=True)
        # Leaks off: a fiber abandoned at an error never frees what its frames held.
        run = subprocess.run([exe], capture_output=True, text=True, timeout=600,
                             env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0",
                                      UBSAN_OPTIONS="print_stacktrace=1"))
    # ASan warns once that it cannot follow swapcontext by itself; the emulator annotates every
    # switch (__sanitizer_start_switch_fiber), so any other line is a report.
    reports = [line for line in run.stderr.splitlines()
               if "doesn't fully support makecontext/swapcontext" not in line]
    assert run.returncode == 0 and not reports, run.stderr[-20000:]
    outcomes = {}
    for line in run.stdout.splitlines():
        name, racecheck, seed, result = line.split(" ", 3)
        outcomes[name, racecheck == "1", int(seed)] = result
    for (name, racecheck, seed), result in outcomes.items():
        if name in CORRECT:
            assert result == "ok", (name, racecheck, seed, result)
        elif name != "shared_race" or racecheck:  # a race the detector alone reports
            assert result.startswith("error:"), (name, racecheck, seed, result)
    assert len(outcomes) == 2 * 3 * len(set(CORRECT) | {n.split("+")[0] for n in PLANTED})
