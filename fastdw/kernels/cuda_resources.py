"""What each CUDA kernel of csrc/cuda costs a GPU: `python -m fastdw.kernels.cuda_resources`
compiles csrc/cuda/kernels.cu (every instantiation the launchers can choose) with nvcc for
sm_80 (A100) and sm_90 (H100), as the GPU build does, with ptxas reporting each kernel's
registers, stack, spills and shared memory, and prints them with the theoretical occupancy
they allow on that GPU. tests/cuda/test_cuda_resources.py checks the same table.

Spills and local memory are build errors here (ptxas --warn-on-spills and
--warn-on-local-memory-usage under -Werror all-warnings). A kernel's block size is the one its
__launch_bounds__ declares (.maxntid in the PTX): every kernel launches with exactly that many
threads. The shared memory in the table is static: the dynamic shared memory a launch sizes
per shape (inverted_residual's, IrShared in csrc/cuda/inverted_residual.cuh) is not in it, nor
in its occupancy. The compile is cached (fastdw/kernels/cpp_build.py, build_cache) by the sources'
hash, so the test and the command share one build.

Theoretical occupancy, computed as the CUDA occupancy calculator does (the formula, in full):
resident blocks per SM are the fewest that the warp slots, the block slots, the register
file (registers allocated per warp in units of REGISTER_UNIT, from one of SUBPARTITIONS equal
shares) and shared memory (per block plus the RESERVED_SHARED the system keeps, rounded up to
SHARED_UNIT) each allow; occupancy is the resident warps over the SM's warp slots. It is what
the hardware could hold, not what a kernel achieves.
"""
import collections
import glob
import os
import re
import subprocess
import sys

from fastdw.kernels import cpp_build

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(SOURCE_ROOT, "csrc", "cuda")
SOURCE = os.path.join(CSRC, "kernels.cu")
NVCC_FLAGS = ["-std=c++20", "-O3", "-Xptxas", "-v,--warn-on-spills,--warn-on-local-memory-usage",
              "-Werror", "all-warnings"]

# Per-SM limits (CUDA programming guide, "Compute Capabilities", and the A100 / H100 whitepapers:
# the largest shared-memory carve-out of the unified L1 / shared memory).
GPU = collections.namedtuple("GPU", "name registers shared threads blocks")
GPUS = {80: GPU("A100", 64 * 1024, 164 * 1024, 2048, 32),
        90: GPU("H100", 64 * 1024, 228 * 1024, 2048, 32)}
WARP = 32
REGISTER_UNIT = 256     # registers are allocated per warp in units of 256
SHARED_UNIT = 128       # shared memory is allocated per block in units of 128 bytes
RESERVED_SHARED = 1024  # bytes the system reserves per block (compute capability 8.0 and up)
SUBPARTITIONS = 4       # warp schedulers per SM, each with a quarter of the register file

Kernel = collections.namedtuple(
    "Kernel", "name registers stack spill_stores spill_loads shared threads")
Occupancy = collections.namedtuple("Occupancy", "blocks warps fraction limit")


def sources():
    """The files a compile of kernels.cu depends on, relative to csrc/cuda."""
    return sorted(os.path.relpath(p, CSRC) for pattern in ("*.cu", "*.cuh", "*.h", "emulator/*.h")
                  for p in glob.glob(os.path.join(CSRC, pattern)))


def compile_kernels(arch):
    """The folder holding kernels.cu compiled for sm_<arch>: ptxas.txt (ptxas's report),
    kernels.ptx and kernels.o; from the cache, or compiled now. Raises RuntimeError with nvcc's
    output when the compile fails (a spill, for one)."""
    import shutil
    directory = cpp_build.build_cache(f"cuda-resources-sm{arch}", CSRC, sources(), NVCC_FLAGS)
    report = os.path.join(directory, "ptxas.txt")
    if not os.path.exists(report):
        keep = os.path.join(directory, "keep")
        os.makedirs(keep, exist_ok=True)
        done = subprocess.run(
            ["nvcc", *NVCC_FLAGS, "-c", SOURCE, "-o", os.path.join(directory, "kernels.o"),
             f"-gencode=arch=compute_{arch},code=sm_{arch}", "-keep", "--keep-dir", keep],
            capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"nvcc for sm_{arch} failed:\n{done.stdout}{done.stderr}")
        os.replace(os.path.join(keep, "kernels.ptx"), os.path.join(directory, "kernels.ptx"))
        shutil.rmtree(keep)
        with open(report + ".tmp", "w") as f:
            f.write(done.stdout + done.stderr)
        os.replace(report + ".tmp", report)  # written last: the mark of a finished compile
    return directory


def compiled_kernels(arch):
    """{mangled name: Kernel} of kernels.cu compiled for sm_<arch> (compile_kernels)."""
    directory = compile_kernels(arch)
    with open(os.path.join(directory, "ptxas.txt")) as f, \
            open(os.path.join(directory, "kernels.ptx")) as g:
        return kernels(f.read(), g.read())


def kernels(report, ptx):
    """{mangled name: Kernel} from ptxas's -v report and the PTX (for .maxntid)."""
    threads = {}
    for name, body in re.findall(r"\.entry (\w+)\((.*?)\{", ptx, flags=re.S):
        bound = re.search(r"\.maxntid (\d+), (\d+), (\d+)", body)
        if bound is None:
            raise ValueError(f"{name} declares no __launch_bounds__ (its block size)")
        x, y, z = map(int, bound.groups())
        threads[name] = x * y * z
    found = {}
    for block in report.split("Compiling entry function ")[1:]:
        name = block.split("'")[1]
        stack, stores, loads = map(int, re.search(
            r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
            block).groups())
        registers = int(re.search(r"Used (\d+) registers", block).group(1))
        shared = re.search(r"(\d+) bytes smem", block)
        found[name] = Kernel(name, registers, stack, stores, loads,
                             int(shared.group(1)) if shared else 0, threads[name])
    return found


def occupancy(registers, shared, threads, gpu):
    """The theoretical occupancy of a kernel using `registers` per thread and `shared` bytes of
    static and dynamic shared memory per block of `threads` threads, on `gpu` (one of GPUS).
    Registers are split evenly among the SM's SUBPARTITIONS warp schedulers, and a warp's
    registers come from one of them."""
    warps = -(-threads // WARP)
    per_warp = -(-registers * WARP // REGISTER_UNIT) * REGISTER_UNIT
    per_block = -(-(shared + RESERVED_SHARED) // SHARED_UNIT) * SHARED_UNIT
    by_registers = (gpu.registers // SUBPARTITIONS // per_warp * SUBPARTITIONS // warps
                    if per_warp else gpu.blocks)
    limits = {"warps": gpu.threads // WARP // warps, "blocks": gpu.blocks,
              "registers": by_registers, "shared": gpu.shared // per_block}
    limit = min(limits, key=limits.get)
    blocks = limits[limit]
    return Occupancy(blocks, blocks * warps, blocks * warps / (gpu.threads // WARP), limit)


def demangle(name):
    """fastdw_cuda::dwconv_bn_act_nhwc<float, 3, 1> for its mangled name (c++filt, where
    installed)."""
    try:
        out = subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip()
    except OSError:
        return name
    return out.split("(")[0] or name


def table(archs=tuple(GPUS)):
    """Rows (arch, Kernel, Occupancy) for every kernel, by arch then name."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(len(archs)) as pool:  # one nvcc per arch, at once
        compiled = dict(zip(archs, pool.map(compiled_kernels, archs)))
    rows = []
    for arch in archs:
        for name, kernel in sorted(compiled[arch].items()):
            rows.append((arch, kernel, occupancy(kernel.registers, kernel.shared, kernel.threads,
                                                 GPUS[arch])))
    return rows


def format_table(rows):
    lines = [f"{'gpu':<12} {'regs':>4} {'smem B':>7} {'threads':>7} {'spill B':>7} "
             f"{'blocks/SM':>9} {'occupancy':>9}  limited by  kernel"]
    for arch, k, occ in rows:
        lines.append(f"{GPUS[arch].name + ' sm_' + str(arch):<12} {k.registers:>4} "
                     f"{k.shared:>7} {k.threads:>7} {k.spill_stores + k.spill_loads:>7} "
                     f"{occ.blocks:>9} {occ.fraction:>9.1%}  {occ.limit:<10}  "
                     f"{demangle(k.name)}")
    return "\n".join(lines)


def main():
    print(f"csrc/cuda/kernels.cu, nvcc {' '.join(NVCC_FLAGS)}; theoretical occupancy "
          f"(python -m fastdw.kernels.cuda_resources)")
    print(format_table(table()))


if __name__ == "__main__":
    sys.exit(main())
