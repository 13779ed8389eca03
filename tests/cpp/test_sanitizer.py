"""The C++ kernels under AddressSanitizer: every case of cases.py and the cpp backend's fuzz test
(tests/reliability/test_fuzz.py), on every instruction-set variant, must run with no ASan report
(heap overflows, use-after-free, ...) and no failure.

A separate ASan-instrumented copy of the extension is built with torch.utils.cpp_extension.load
(ninja) from the same sources and run in a subprocess started with LD_PRELOAD=libasan (Python
itself is not instrumented, so the ASan runtime must come first). Leak detection is off: the
interpreter's own allocations would be reported.

Slow: the first build takes ~3-4 min on 2 cores (cached in FASTDW_ASAN_BUILD_DIR, default
~/.cache/fastdw_asan; later runs ~1 min). Runs when FASTDW_SANITIZER_TESTS=1 (CI: a separate
job), skipped otherwise.
"""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

pytestmark = pytest.mark.skipif(os.environ.get("FASTDW_SANITIZER_TESTS") != "1",
                                reason="slow; set FASTDW_SANITIZER_TESTS=1 to run")

DRIVER = r"""
import importlib.util, os, sys
import torch.utils.cpp_extension as ext
root, here, build = sys.argv[1:4]
# fastdw's build rules, loaded by path: importing fastdw could load its own build of fastdw._C.
spec = importlib.util.spec_from_file_location(
    "cpp_build", os.path.join(root, "fastdw", "kernels", "cpp_build.py"))
rules = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rules)
flags = [f for f in rules.COMPILE_FLAGS if not f.startswith("-O")] + [
    "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]
os.makedirs(build, exist_ok=True)
ext.load(name="fastdw_asan", sources=[os.path.join(root, p) for p in rules.sources(root)],
         extra_cflags=flags, extra_ldflags=["-fsanitize=address"], build_directory=build,
         is_python_module=False)
maps = open("/proc/self/maps").read()
assert "libasan" in maps and "fastdw_asan.so" in maps, "ASan runtime or instrumented copy missing"
# The copy registers the fastdw_cpp ops; fastdw's own build registering them again would abort.
# So the copy itself becomes fastdw._C, and fastdw's cpp backend, in the fuzz test below, runs
# its instrumented kernels.
rules.import_as_extension(os.path.join(build, "fastdw_asan.so"))
sys.path.insert(0, here)
import cases
cases.poison_outputs()
import torch
print("capability:", torch.ops.fastdw_cpp.capability())
bad = [(label, p) for label, run, case in cases.all_cases() if (p := cases.check(run, case))]
for label, problem in bad:
    print("FAIL", label, problem)
import fastdw.kernels.cpp, pytest
assert fastdw.kernels.cpp.unavailable() is None, fastdw.kernels.cpp.unavailable()
fuzz = os.path.join(os.path.dirname(here), "reliability", "test_fuzz.py")
fuzzed = pytest.main(["-q", "-p", "no:cacheprovider", "-k", "cpp", fuzz])
print("fuzz exit status:", int(fuzzed))
sys.exit(1 if bad or fuzzed != 0 else 0)
"""


def preload():
    """LD_PRELOAD value: libasan first, then libstdc++ so that ASan's __cxa_throw interceptor
    finds the real function (otherwise the first C++ exception aborts in the interceptor)."""
    paths = []
    for lib in ("libasan.so", "libstdc++.so"):
        path = subprocess.run(["gcc", f"-print-file-name={lib}"], capture_output=True,
                              text=True).stdout.strip()
        if not os.path.isabs(path) or not os.path.exists(path):
            pytest.skip(f"{lib} not found (gcc -print-file-name={lib})")
        paths.append(os.path.realpath(path))
    return ":".join(paths)


@pytest.mark.parametrize("capability", ["avx512", "avx2", "baseline"])
def test_kernels_under_address_sanitizer(capability):
    build = os.environ.get("FASTDW_ASAN_BUILD_DIR",
                           os.path.expanduser("~/.cache/fastdw_asan"))
    env = dict(os.environ, LD_PRELOAD=preload(), FASTDW_CPU_CAPABILITY=capability,
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=86", MAX_JOBS="2")
    run = subprocess.run([sys.executable, "-c", DRIVER, ROOT, HERE, build], env=env,
                         capture_output=True, text=True, timeout=1800)
    output = run.stdout + run.stderr[-20000:]
    assert "AddressSanitizer" not in run.stderr, output
    assert run.returncode == 0, output
    assert "capability:" in run.stdout, output
    assert "fuzz exit status: 0" in run.stdout, output
