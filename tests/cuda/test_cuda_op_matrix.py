"""The op contract on the emulated CUDA backend: with FASTDW_CUDA_EMULATE=1 the cuda backend is
usable on CPU tensors, so the matrices of tests/ops/test_dwconv_bn_act.py,
tests/ops/test_pwconv_bn_act.py and tests/ops/test_inverted_residual.py (forward against float64
stock ops, opcheck, torch.compile fullgraph, layouts, bad inputs) run on it as on every other
backend. Each runs in a child process because the variable is read when fastdw is imported.

The float64 gradchecks are left out: the cuda backend has no float64 kernel, so on it they run
the reference backend's code, which the reference rows of the same matrix test. The gradient
rows in the dtypes it has run its dwconv_bn_act backward (the other ops' backward is
reference's)."""
import os
import re
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("op, rows", [("dwconv_bn_act", 100), ("pwconv_bn_act", 80),
                                      ("inverted_residual", 52)])
def test_the_op_matrix_runs_on_emulated_cuda(emulator, op, rows):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         os.path.join(TESTS, "ops", f"test_{op}.py"), "-k", "cuda and not gradcheck"],
        env={**os.environ, "FASTDW_CUDA_EMULATE": "1"}, capture_output=True, text=True,
        timeout=1800)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    # Each matrix has this many cuda rows or more; none may skip or fail.
    assert passed and int(passed.group(1)) >= rows, summary
    assert "skipped" not in summary and "failed" not in summary, summary
