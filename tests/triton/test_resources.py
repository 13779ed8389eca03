"""Static resource check of every Triton kernel for sm_80 and sm_90 (no GPU needed): compiles
every config the launchers can pick and fails on any register spill or shared memory above the
architecture's limit. Runs `python -m fastdw.kernels.triton.resources` in its own process,
because this test process has TRITON_INTERPRET=1 and interpreted kernels cannot be compiled."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="needs triton installed")
pytest.importorskip("triton.backends.nvidia", reason="needs triton's NVIDIA backend (ptxas)")


def test_no_spills_and_shared_memory_within_limits():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "fastdw.kernels.triton.resources"],
                          env=env, capture_output=True, text=True, timeout=900)
    print(done.stdout)  # the table, shown with -s
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert " 0 with problems" in done.stdout
