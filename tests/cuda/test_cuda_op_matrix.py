"""The op contract on the emulated CUDA backend: with FASTDW_CUDA_EMULATE=1 the cuda backend is
usable on CPU tensors, so the matrices of tests/ops/test_dwconv_bn_act.py,
tests/ops/test_pwconv_bn_act.py and tests/ops/test_inverted_residual.py (forward against float64
stock ops, opcheck, torch.compile fullgraph, layouts, bad inputs) run on it as on every other
backend. Each runs in a child process because the variable is read when fastdw is imported.

Left out, because on the cuda backend they run the reference backend's code, which the reference
rows of the same matrix test: the float64 gradchecks (no float64 kernel, no backward), and
inverted_residual's opcheck (its block has a squeeze-excite, which has no CUDA kernel yet)."""
import os
import re
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("op, rows, left_out", [
    ("dwconv_bn_act", 100, "gradcheck"), ("pwconv_bn_act", 80, "gradcheck"),
    ("inverted_residual", 50, "gradcheck or opcheck")])
def test_the_op_matrix_runs_on_emulated_cuda(emulator, op, rows, left_out):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         os.path.join(TESTS, "ops", f"test_{op}.py"), "-k", f"cuda and not ({left_out})"],
        env={**os.environ, "FASTDW_CUDA_EMULATE": "1"}, capture_output=True, text=True,
        timeout=1800)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    # Each matrix has this many cuda rows or more; none may skip or fail.
    assert passed and int(passed.group(1)) >= rows, summary
    assert "skipped" not in summary and "failed" not in summary, summary
