"""The op contract on the emulated CUDA backend: with FASTDW_CUDA_EMULATE=1 the cuda backend is
usable on CPU tensors, so the matrices of tests/ops/test_dwconv_bn_act.py,
tests/ops/test_pwconv_bn_act.py and tests/ops/test_inverted_residual.py (forward against float64
stock ops, opcheck, torch.compile fullgraph, layouts, bad inputs), and tests/ops/test_nonfinite.py
(NaN and Inf through every op and activation, forward and gradients), run on it as on every
other backend. They run in one child process (the variable is read when fastdw is imported; one
process pays for importing torch and loading the emulator once), and each op's test checks its
own rows of that run.

The float64 gradchecks are left out: the cuda backend has no float64 kernel, so on it they run
the reference backend's code, which the reference rows of the same matrix test. The gradient
rows in the dtypes it has run its backward kernels (dwconv_bn_act, pwconv_bn_act, and
inverted_residual composed of them; a squeeze-excite block's backward is reference's). The
dwconv_bn_act rows include NCHW and strided inputs (the NCHW kernel) and a channel multiplier."""
import collections
import os
import re
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tests/ops/test_<name>.py for each name: the three ops' matrices and the non-finite values' file.
FILES = ("dwconv_bn_act", "pwconv_bn_act", "inverted_residual", "nonfinite")


@pytest.fixture(scope="module")
def matrix_run(emulator):
    """(outcomes per op file: {"PASSED": n, ...}, the run's output) of the files'
    cuda rows in one child process."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
         *(os.path.join(TESTS, "ops", f"test_{op}.py") for op in FILES),
         "-k", "cuda and not gradcheck"],
        env={**os.environ, "FASTDW_CUDA_EMULATE": "1"}, capture_output=True, text=True,
        timeout=1800)
    outcomes = collections.defaultdict(collections.Counter)
    for outcome, path in re.findall(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+?)::",
                                    done.stdout, flags=re.M):
        outcomes[os.path.basename(path)][outcome] += 1
    return outcomes, done.stdout[-4000:] + done.stderr[-2000:]


@pytest.mark.parametrize("op, rows", [("dwconv_bn_act", 100), ("pwconv_bn_act", 80),
                                      ("inverted_residual", 52), ("nonfinite", 66)])
def test_the_op_matrix_runs_on_emulated_cuda(matrix_run, op, rows):
    outcomes, output = matrix_run
    counts = outcomes[f"test_{op}.py"]
    # Each matrix has this many cuda rows or more; none may skip or fail.
    assert counts["PASSED"] >= rows, (dict(counts), output)
    assert set(counts) == {"PASSED"}, (dict(counts), output)
