"""Static resource check of every Triton kernel for sm_80 and sm_90 (no GPU needed): compiles
every config the launchers can pick and fails on any register spill, shared memory above the
architecture's limit, or a tl.dot kernel not multiplying fp16/bf16 on tensor cores in its dtype.
Runs `python -m fastdw.kernels.triton.resources` in its own process, because this test process
has TRITON_INTERPRET=1 and interpreted kernels cannot be compiled."""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="needs triton installed")
pytest.importorskip("triton.backends.nvidia", reason="needs triton's NVIDIA backend (ptxas)")
# Imports no kernel (the check imports them lazily, in its own process).
from fastdw.kernels.triton import resources  # noqa: E402

KERNELS = ("dw_forward_kernel", "dw_backward_params_kernel", "dw_backward_input_kernel",
           "pw_kernel", "ir_kernel")


def table_rows(text):
    """(kernel, config, arch, mma, blocks per SM, occupancy) of each row of the printed table."""
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in KERNELS:
            arch = next(i for i, word in enumerate(words) if word.startswith("sm_"))
            yield (words[0], " ".join(words[1:arch]), words[arch], words[arch + 5],
                   int(words[arch + 6]), words[arch + 7])


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
    bf16 = {(kernel, arch, config.endswith(" int64")) for kernel, config, arch, *_ in rows
            if " bf16 " in f" {config} "}
    assert bf16 == {(kernel, arch, int64) for kernel in KERNELS for arch in ("sm_80", "sm_90")
                    for int64 in (False, True)}
    for kernel, config, arch, mma, blocks, occupied in rows:
        if kernel in ("pw_kernel", "ir_kernel") and " bf16 " in f" {config} ":
            assert mma == "bf16", (kernel, config, arch)
        assert blocks >= 1 and occupied.endswith("%"), (kernel, config, arch)
    for kernel in KERNELS:  # the occupancy span of each kernel on an A100 and an H100
        for gpu in ("A100 (sm_80)", "H100 (sm_90)"):
            assert f"occupancy on {gpu} of {kernel}: " in done.stdout

    # The worst cases are checked: every kernel with channels not multiples of 16 (fp16), and
    # the fused block at stride 1 with the residual and k 7 in every dtype.
    for kernel in KERNELS:
        assert any(k == kernel and c.endswith(" c120") for k, c, *_ in rows), kernel
    for dt in ("fp32", "fp16", "bf16"):
        assert any(c.startswith(f"fused {dt} ") and c.endswith(" k7 s1 silu c64")
                   for k, c, *_ in rows), dt
    # The block kernel on 120 channels (C % 16 != 0: VEC 8) loads every x, weight and per-channel
    # vector as a vector in fp16/bf16 (1 of 101-151 loads before VEC), and fits two 8-warp blocks
    # per SM (209-221 registers, one block, before).
    ir_c120 = [line.split() for line in done.stdout.splitlines()
               if line.startswith("ir_kernel ") and " c120 " in f"{line} "
               and (" fp16 " in line or " bf16 " in line) and " persistent " not in line]
    assert ir_c120
    for words in ir_c120:
        arch = next(i for i, word in enumerate(words) if word.startswith("sm_"))
        vector, loads = words[arch + 8].split("/")
        assert vector == loads and int(words[arch + 6]) >= 2, words
    # fp32 with TF32 allowed (an opt-in) multiplies on the tensor cores as tf32 (the check fails
    # a row whose mma differs), in both tl.dot kernels on both archs.
    tf32 = {(kernel, arch) for kernel, config, arch, mma, *_ in rows
            if config.endswith(" tf32") and mma == "tf32"}
    assert tf32 == {(kernel, arch) for kernel in ("pw_kernel", "ir_kernel")
                    for arch in ("sm_80", "sm_90")}
    # Capped at 128 registers, every aligned fp16/bf16 config of the tl.dot kernels fits two
    # 8-warp blocks (or more) per SM: 255 allowed 1 (issue 13: fused fp16 at 161 registers).
    for kernel, config, arch, mma, blocks, occupied in rows:
        if kernel in ("pw_kernel", "ir_kernel") and mma in ("f16", "bf16") \
                and not config.removesuffix(" persistent").endswith(" c120"):
            assert blocks >= 2, (kernel, config, arch, blocks)
    # The block kernel's persistent variant (inverted_residual.launch_plan) is compiled fused and
    # split in every dtype on both archs, the worst cases included; its spills are reported, not
    # failures (the launcher then takes the plain variant, which never spills).
    persistent = {(config.split()[0], config.split()[1], arch) for kernel, config, arch, *_
                  in rows if kernel == "ir_kernel" and config.endswith(" persistent")}
    assert persistent == {(path, dt, arch) for path in ("fused", "split")
                          for dt in ("fp32", "fp16", "bf16") for arch in ("sm_80", "sm_90")}
    assert any(config.endswith(" k7 s1 silu c64 persistent") for _, config, *_ in rows)


# (arch, registers per thread, warps, shared memory bytes) -> (blocks per SM, occupancy), by the
# CUDA occupancy calculator's rules: registers go per warp in units of 256 from 64K, shared
# memory per block plus 1 KB reserved from 164 KB (A100) / 228 KB (H100), 64 warps, 32 blocks.
OCCUPANCY = [
    ((90, 155, 8, 31744), (1, 0.125)),   # 160 regs/thread: 5120/warp, 12 warps fit
    ((90, 128, 8, 31744), (2, 0.25)),    # 128: 4096/warp, 16 warps: two 8-warp blocks
    ((80, 32, 4, 0), (16, 1.0)),         # the 64 warp slots bound it
    ((80, 64, 4, 100_000), (1, 1 / 16)),  # shared memory: 164 KB holds one 101 KB block
    ((90, 64, 4, 100_000), (2, 1 / 8)),   # 228 KB holds two
    ((80, 16, 1, 0), (32, 0.5)),          # the 32-block limit
]


@pytest.mark.parametrize("args,expected", OCCUPANCY, ids=lambda v: str(v))
def test_occupancy(args, expected):
    assert resources.occupancy(*args) == expected


def test_compiled_residency_uses_the_kernel_and_the_device(monkeypatch):
    """A compiled kernel's residency (what the block launcher weighs its persistent variant by)
    counts the registers, warps and shared memory it uses against the current device's limits:
    160 registers x 8 warps fit once in 64K registers; in 128K three times, where 100 KB of
    shared memory bounds it at two in 228 KB; spills are the kernel's."""
    from types import SimpleNamespace
    from fastdw.kernels.triton._shared import compiled_residency
    loaded = []
    kernel = SimpleNamespace(n_regs=160, n_spills=12, metadata=SimpleNamespace(
        num_warps=8, shared=100_000), _init_handles=lambda: loaded.append(1))

    def device(regs):
        return SimpleNamespace(multi_processor_count=10, regs_per_multiprocessor=regs,
                               shared_memory_per_multiprocessor=228 * 1024,
                               max_threads_per_multi_processor=2048, warp_size=32)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for regs, blocks in ((65536, 1), (131072, 2)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d, regs=regs: device(regs))
        assert compiled_residency(kernel) == (10 * blocks, 12)
    assert loaded == [1, 1]
