"""Static resource check of every Triton kernel for sm_80 and sm_90 (no GPU needed): compiles
every config the launchers can pick and fails on any register spill, shared memory above the
architecture's limit, or a tl.dot kernel not multiplying fp16/bf16 on tensor cores in its dtype.
Runs `python -m fastdw.kernels.triton.resources` in its own process, because this test process
has TRITON_INTERPRET=1 and interpreted kernels cannot be compiled."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="needs triton installed")
pytest.importorskip("triton.backends.nvidia", reason="needs triton's NVIDIA backend (ptxas)")

KERNELS = ("dw_forward_kernel", "dw_backward_params_kernel", "dw_backward_input_kernel",
           "pw_kernel", "ir_kernel")


def table_rows(text):
    """(kernel, config, arch, mma) of each row of the printed table."""
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in KERNELS:
            arch = next(i for i, word in enumerate(words) if word.startswith("sm_"))
            yield words[0], " ".join(words[1:arch]), words[arch], words[arch + 5]


def test_no_spills_and_shared_memory_within_limits():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "fastdw.kernels.triton.resources"],
                          env=env, capture_output=True, text=True, timeout=900)
    print(done.stdout)  # the table, shown with -s
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert " 0 with problems" in done.stdout

    # The GPU's bf16 path runs nowhere (the interpreter multiplies bf16 as fp32): it must at
    # least be compiled, for every kernel and both archs, the int64 path included, and the
    # tl.dot kernels must multiply bf16 on the tensor cores as bf16.
    rows = list(table_rows(done.stdout))
    bf16 = {(kernel, arch, config.endswith(" int64")) for kernel, config, arch, _ in rows
            if " bf16 " in f" {config} "}
    assert bf16 == {(kernel, arch, int64) for kernel in KERNELS for arch in ("sm_80", "sm_90")
                    for int64 in (False, True)}
    for kernel, config, arch, mma in rows:
        if kernel in ("pw_kernel", "ir_kernel") and " bf16 " in f" {config} ":
            assert mma == "bf16", (kernel, config, arch)
