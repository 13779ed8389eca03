"""csrc/cuda's kernels compiled by nvcc for sm_80 (A100) and sm_90 (H100), as the GPU build will
compile them: every instantiation the launchers can choose must build with no register spills
and no local memory (ptxas -v with --warn-on-spills / --warn-on-local-memory-usage and -Werror
all-warnings make either a build error), no stack frame, and within the register budget below;
its 16-byte accesses must be single 128-bit instructions. Run with -s to see the table."""
import os
import re
import shutil
import subprocess
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = os.path.join(ROOT, "csrc", "cuda", "kernels.cu")
ARCHS = (80, 90)
PTXAS_FLAGS = "-v,--warn-on-spills,--warn-on-local-memory-usage"
# 256-thread blocks with at most 64 registers a thread: 4 blocks (half of the 2048 threads an
# SM holds) fit in the 65536 registers of an A100 or H100 SM.
MAX_REGISTERS = 64
# Mangled template arguments of the dtypes, and the launcher's (k, stride) instantiations.
DTYPES = {"float": "f", "half": "6__half", "bfloat16": "13__nv_bfloat16"}
SHAPES = [(3, 1), (3, 2), (5, 1), (5, 2), (7, 1), (7, 2), (0, 0)]

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None,
                                reason="needs nvcc (the CUDA toolkit) on PATH")


@pytest.fixture(scope="module")
def compiled():
    """{arch: (ptxas report, object file)}; both archs compile at once (one nvcc each)."""
    out = tempfile.mkdtemp(prefix="fastdw_cuda_resources_")
    jobs = {}
    for arch in ARCHS:
        obj = os.path.join(out, f"kernels_sm{arch}.o")
        jobs[arch] = (obj, subprocess.Popen(
            ["nvcc", "-std=c++20", "-O3", "-c", SOURCE, "-o", obj,
             f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", PTXAS_FLAGS,
             "-Werror", "all-warnings"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = {}
    for arch, (obj, job) in jobs.items():
        report = job.communicate(timeout=900)[0]
        assert job.returncode == 0, f"nvcc for sm_{arch} failed:\n{report}"
        results[arch] = (report, obj)
    yield results
    shutil.rmtree(out, ignore_errors=True)


def kernels(report):
    """{mangled kernel name: {"registers", "stack", "spill_stores", "spill_loads"}}."""
    found = {}
    for block in report.split("Compiling entry function ")[1:]:
        name = block.split("'")[1]
        stack, stores, loads = map(int, re.search(
            r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
            block).groups())
        registers = int(re.search(r"Used (\d+) registers", block).group(1))
        found[name] = dict(registers=registers, stack=stack, spill_stores=stores,
                           spill_loads=loads)
    return found


@pytest.mark.parametrize("arch", ARCHS)
def test_every_instantiation_fits(compiled, arch):
    table = kernels(compiled[arch][0])
    for name, row in sorted(table.items()):
        print(f"sm_{arch} {row['registers']:3d} registers {row['stack']} B stack "
              f"{row['spill_stores'] + row['spill_loads']} B spills  {name}")
    expected = {f"dwconv_bn_act_nhwcI{code}Li{k}ELi{s}E"
                for code in DTYPES.values() for k, s in SHAPES}
    names = {re.search(r"dwconv_bn_act_nhwcI.*?Li\d+ELi\d+E", n).group(0) for n in table}
    assert names == expected
    for name, row in table.items():
        assert row["stack"] == row["spill_stores"] == row["spill_loads"] == 0, (name, row)
        assert row["registers"] <= MAX_REGISTERS, (name, row)


@pytest.mark.parametrize("arch", ARCHS)
def test_vector_accesses_are_128_bit(compiled, arch):
    """The 16-byte loads and stores of whole channel groups (load_vec / store_vec) are single
    LDG.E.128 / STG.E.128 instructions in the machine code."""
    try:
        from triton.backends.nvidia import compiler
    except ImportError:
        pytest.skip("needs cuobjdump, which comes with triton's NVIDIA backend")
    tool = os.path.join(os.path.dirname(compiler.__file__), "bin", "cuobjdump")
    sass = subprocess.run([tool, "-sass", compiled[arch][1]], capture_output=True, text=True,
                          check=True).stdout
    assert re.search(r"LDG\.E\.128", sass) and re.search(r"STG\.E\.128", sass)
