"""csrc/cuda's kernels compiled by nvcc for sm_80 (A100) and sm_90 (H100), as the GPU build
compiles them, through fastdw/kernels/cuda_resources.py (the table `python -m
fastdw.kernels.cuda_resources` prints): every instantiation the launchers can choose must build
with no register spills and no local memory (ptxas -v with --warn-on-spills /
--warn-on-local-memory-usage and -Werror all-warnings make either a build error), no stack
frame, and within the register budget below; the occupancy the table gives is the calculator's
for the parsed numbers; the 16-byte accesses are single 128-bit instructions, and the
tensor-core kernels' mma.sync / ldmatrix / cp.async are the machine's HMMA / LDSM / LDGSTS. Run
with -s to see the table."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from fastdw.kernels import cuda_resources as resources

ARCHS = (80, 90)
# Mangled template arguments of the dtypes.
DTYPES = {"float": "f", "half": "6__half", "bfloat16": "13__nv_bfloat16"}
# The depthwise kernels' (k, stride) instantiations, (0, 0) the generic one.
DEPTHWISE = [f"I{code}Li{k}ELi{s}EE" for code in DTYPES.values()
             for k, s in [(3, 1), (3, 2), (5, 1), (5, 2), (7, 1), (7, 2), (0, 0)]]
# Per kernel: its instantiations (mangled names past the kernel's), its block size (the
# launcher's), the most registers a thread may use and the least occupancy that leaves.
#  * dwconv_bn_act_nhwc: (k, stride) instantiations, 256 threads; 64 registers let 4 blocks
#    (half of the 2048 threads an SM holds) fit in the 65536 registers of an A100 or H100 SM.
#  * dwconv_bn_act_nchw: as dwconv_bn_act_nhwc (its window and taps are in dynamic shared
#    memory, sized per shape, so the occupancy counts registers only).
#  * pwconv_bn_act_ffma: one per dtype, 256 threads, budgeted as dwconv.
#  * pwconv_bn_act_mma: fp16/bf16, 128 threads holding a 32 x 32 accumulator per warp (32
#    floats a thread); 96 registers still let 5 blocks (20 warps) stay resident.
#  * inverted_residual_nhwc: per dtype, fused (false) or a squeeze-excite's first kernel
#    (true); 128 threads holding a 16 x 64 project accumulator and a 16 x 32 expand accumulator
#    per warp (48 floats a thread) besides the walk's indices; 168 registers let 3 blocks stay
#    resident. se_gate_project: per dtype, 128 threads, the project accumulator only; 128
#    registers let 4 blocks stay resident. Their shared memory is dynamic, sized per shape
#    (csrc/cuda/inverted_residual.cuh), so the table's occupancy counts registers only.
#  * dwconv backward (csrc/cuda/dwconv_backward.cuh): 256 threads each; dw_backward_z recomputes
#    the conv with 64-bit pixel indices and the activation's derivative, 96 registers (2 blocks
#    resident); the input, weight and slice-sum kernels are budgeted as dwconv.
#  * pwconv backward (csrc/cuda/pwconv_backward.cuh): 256 threads each; pw_backward_weight is
#    the FFMA GEMM's tile (a 4 x 4 accumulator a thread) and pw_backward_bn a per-channel sum,
#    budgeted as dwconv.
KERNELS = {
    "dwconv_bn_act_nhwc": (DEPTHWISE, 256, 64, 0.5),
    "dwconv_bn_act_nchw": (DEPTHWISE, 256, 64, 0.5),
    "pwconv_bn_act_ffma": ([f"I{code}E" for code in DTYPES.values()], 256, 64, 0.5),
    "pwconv_bn_act_mma": ([f"I{code}E" for code in ("6__half", "13__nv_bfloat16")], 128, 96,
                          0.3),
    "inverted_residual_nhwc": ([f"I{code}Lb{se}EE" for code in DTYPES.values()
                                for se in (0, 1)], 128, 168, 0.18),
    "se_gate_project": ([f"I{code}E" for code in DTYPES.values()], 128, 128, 0.25),
    "dw_backward_z": ([f"I{code}E" for code in DTYPES.values()], 256, 96, 0.25),
    "dw_backward_input": ([f"I{code}E" for code in DTYPES.values()], 256, 64, 0.5),
    "dw_backward_weight": ([f"I{code}E" for code in DTYPES.values()], 256, 64, 0.5),
    "dw_backward_sum": ([""], 256, 64, 0.5),
    "pw_backward_bn": ([""], 256, 64, 0.5),
    "pw_backward_weight": ([f"I{code}E" for code in DTYPES.values()], 256, 64, 0.5),
}


def family(mangled):
    """(kernel, mangled template arguments) of a mangled instantiation's name:
    _ZN11fastdw_cuda<length><kernel><arguments>EvNS_..., or (kernel, "") for a kernel that is
    not a template."""
    start = re.match(r"_ZN11fastdw_cuda(\d+)", mangled)
    end = start.end() + int(start.group(1))
    if not mangled.startswith("I", end):  # not a template: no arguments
        return mangled[start.end():end], ""
    return mangled[start.end():end], mangled[end:mangled.index("EvNS_", end)]


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
        names = {family(k.name) for a, k, _ in table if a == arch}
        assert names == {(name, args) for name, (instances, *_) in KERNELS.items()
                         for args in instances}, arch
    assert len(table) == len(ARCHS) * sum(len(v[0]) for v in KERNELS.values())
    for arch, kernel, occupancy in table:
        _, threads, max_registers, min_occupancy = KERNELS[family(kernel.name)[0]]
        assert kernel.stack == kernel.spill_stores == kernel.spill_loads == 0, (arch, kernel)
        assert kernel.registers <= max_registers, (arch, kernel)
        assert kernel.threads == threads, (arch, kernel)  # the launcher's block size
        assert occupancy == resources.occupancy(kernel.registers, kernel.shared, kernel.threads,
                                                resources.GPUS[arch])
        assert occupancy.fraction >= min_occupancy, (arch, kernel, occupancy)


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


def machine_code(arch):
    """The SASS of kernels.cu for sm_<arch> (cuobjdump of the table's compile)."""
    try:
        from triton.backends.nvidia import compiler
    except ImportError:
        pytest.skip("needs cuobjdump, which comes with triton's NVIDIA backend")
    tool = os.path.join(os.path.dirname(compiler.__file__), "bin", "cuobjdump")
    return subprocess.run([tool, "-sass", os.path.join(resources.compile_kernels(arch),
                                                        "kernels.o")],
                          capture_output=True, text=True, check=True).stdout


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_vector_accesses_are_128_bit(table, arch):
    """The 16-byte loads and stores of whole channel groups (load_vec / store_vec) are single
    LDG.E.128 / STG.E.128 instructions in the machine code."""
    sass = machine_code(arch)
    assert re.search(r"LDG\.E\.128", sass) and re.search(r"STG\.E\.128", sass)


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_tensor_core_instructions(table, arch):
    """The pwconv tensor-core kernel's inline PTX (csrc/cuda/ptx.h) became tensor-core matrix
    multiplies, shared-memory matrix loads and asynchronous global-to-shared copies."""
    sass = machine_code(arch)
    for instruction in (r"HMMA\.16816\.F32 ", r"HMMA\.16816\.F32\.BF16", r"LDSM\.16\.M88\.4",
                        r"LDSM\.16\.M88\.2", r"LDGSTS\.E\.BYPASS\.128"):
        assert re.search(instruction, sass), instruction
