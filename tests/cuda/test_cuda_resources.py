"""csrc/cuda's kernels compiled by nvcc for sm_80 (A100) and sm_90 (H100), as the GPU build
compiles them, through fastdw/kernels/cuda_resources.py (the table `python -m
fastdw.kernels.cuda_resources` prints): every instantiation the launchers can choose must build
with no register spills and no local memory (ptxas -v with --warn-on-spills /
--warn-on-local-memory-usage and -Werror all-warnings make either a build error), no stack
frame, and within the register budget below; the occupancy the table gives is the calculator's
for the parsed numbers; the 16-byte accesses are single 128-bit instructions. Run with -s to see
the table."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from fastdw.kernels import cuda_resources as resources

ARCHS = (80, 90)
# 256-thread blocks with at most 64 registers a thread: 4 blocks (half of the 2048 threads an
# SM holds) fit in the 65536 registers of an A100 or H100 SM.
MAX_REGISTERS = 64
THREADS = 256
# Mangled template arguments of the dtypes, and the launcher's (k, stride) instantiations.
DTYPES = {"float": "f", "half": "6__half", "bfloat16": "13__nv_bfloat16"}
SHAPES = [(3, 1), (3, 2), (5, 1), (5, 2), (7, 1), (7, 2), (0, 0)]

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None,
                                reason="needs nvcc (the CUDA toolkit) on PATH")


@pytest.fixture(scope="module")
def table():
    """[(arch, Kernel, Occupancy)]: both archs compile at once, once per source version."""
    return resources.table(ARCHS)


@needs_nvcc
def test_every_instantiation_fits(table):
    print("\n" + resources.format_table(table))
    for arch in ARCHS:
        names = {re.search(r"dwconv_bn_act_nhwcI.*?Li\d+ELi\d+E", k.name).group(0)
                 for a, k, _ in table if a == arch}
        assert names == {f"dwconv_bn_act_nhwcI{code}Li{k}ELi{s}E"
                         for code in DTYPES.values() for k, s in SHAPES}, arch
    assert len(table) == len(ARCHS) * len(DTYPES) * len(SHAPES)
    for arch, kernel, occupancy in table:
        assert kernel.stack == kernel.spill_stores == kernel.spill_loads == 0, (arch, kernel)
        assert kernel.registers <= MAX_REGISTERS, (arch, kernel)
        assert kernel.threads == THREADS, (arch, kernel)  # the launcher's block size
        assert occupancy == resources.occupancy(kernel.registers, kernel.shared, kernel.threads,
                                                resources.GPUS[arch])
        assert occupancy.fraction >= 0.5, (arch, kernel, occupancy)  # what MAX_REGISTERS buys


@pytest.mark.parametrize("registers, shared, threads, arch, blocks, fraction, limit", [
    (32, 0, 256, 80, 8, 1.0, "warps"),
    # 64 x 32 = 2048 registers a warp: 8 warps from each quarter of the register file.
    (64, 0, 256, 80, 4, 0.5, "registers"),
    # 45 registers allocate as 48: 1536 a warp, 10 warps a quarter (not 42 warps of 65536).
    (45, 0, 256, 90, 5, 0.625, "registers"),
    (40, 0, 64, 80, 24, 0.75, "registers"),
    # 48 KB + the 1 KB the system reserves per block: 3 blocks in 164 KB, 4 in 228 KB.
    (16, 48 * 1024, 256, 80, 3, 0.375, "shared"),
    (16, 48 * 1024, 256, 90, 4, 0.5, "shared"),
    (16, 1000, 128, 90, 16, 1.0, "warps"),
    (16, 0, 32, 80, 32, 0.5, "blocks"),
    (32, 0, 1024, 90, 2, 1.0, "warps"),
    (255, 0, 256, 80, 1, 0.125, "registers"),
])
def test_occupancy_formula(registers, shared, threads, arch, blocks, fraction, limit):
    """The occupancy calculator's results, worked out by hand for the SM limits of an A100 /
    H100 (64K registers, 164 / 228 KB of shared memory, 2048 threads, 32 blocks)."""
    occupancy = resources.occupancy(registers, shared, threads, resources.GPUS[arch])
    assert (occupancy.blocks, occupancy.fraction, occupancy.limit) == (blocks, fraction, limit)


@needs_nvcc
def test_the_command_prints_every_kernel_for_both_gpus(table):
    out = subprocess.run([sys.executable, "-m", "fastdw.kernels.cuda_resources"],
                         capture_output=True, text=True, check=True, timeout=900).stdout
    rows = [line for line in out.splitlines() if line.startswith(("A100 sm_80", "H100 sm_90"))]
    assert len(rows) == len(table)
    for arch, kernel, occupancy in table:
        name = resources.demangle(kernel.name)
        gpu = f"{resources.GPUS[arch].name} sm_{arch}"
        assert any(row.startswith(gpu) and row.endswith(name)
                   and f" {kernel.registers} " in row and f" {occupancy.fraction:.1%} " in row
                   for row in rows), (gpu, name, out)


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_vector_accesses_are_128_bit(table, arch):
    """The 16-byte loads and stores of whole channel groups (load_vec / store_vec) are single
    LDG.E.128 / STG.E.128 instructions in the machine code."""
    try:
        from triton.backends.nvidia import compiler
    except ImportError:
        pytest.skip("needs cuobjdump, which comes with triton's NVIDIA backend")
    tool = os.path.join(os.path.dirname(compiler.__file__), "bin", "cuobjdump")
    sass = subprocess.run([tool, "-sass", os.path.join(resources.compile_kernels(arch),
                                                        "kernels.o")],
                          capture_output=True, text=True, check=True).stdout
    assert re.search(r"LDG\.E\.128", sass) and re.search(r"STG\.E\.128", sass)
