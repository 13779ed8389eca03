"""How fastdw._C, the cpp backend's C++ extension, and fastdw.kernels._C_cuda, the cuda
backend's, are built: one home for their sources and flags.

fastdw._C is built three ways:

* Ahead of time: `pip install --no-build-isolation -e .` (setup.py loads this file by path,
  without importing fastdw) compiles it against the torch that is installed.
* On first use: a plain `pip install -e .` runs setup.py in pip's isolated build environment,
  where torch is absent, so nothing is compiled then (setup.py installs the Python package
  alone). The first import of the cpp backend then compiles the same sources with
  torch.utils.cpp_extension (ninja) into a cache directory keyed on the torch and Python
  versions and a hash of the sources and flags, under a file lock so two processes never build
  at once; later processes load the cached library.
* Under AddressSanitizer: tests/cpp/test_sanitizer.py builds an instrumented copy with extra
  flags.

fastdw/kernels/cpp.py imports fastdw._C, or calls compile_instead() where it is missing;
`python -m fastdw info` shows which happened.

fastdw.kernels._C_cuda (csrc/cuda: the kernels compiled by nvcc for TORCH_CUDA_ARCH_LIST, default
"8.0;9.0", and the ops' registration for CUDA tensors) is built ahead of time only, by setup.py
where torch is importable, as FASTDW_BUILD_CUDA says (cuda_build_decision): "auto" (the
default) builds it where torch is a CUDA build and nvcc is found and skips it otherwise, "1"
requires it (the build fails saying what is missing), "0" skips it. A skipped build leaves a
note saying why beside where the extension would be (CUDA_SKIP_NOTE), which
fastdw/kernels/cuda.py reports. It is never compiled on first use.
"""
import contextlib
import glob
import hashlib
import importlib.util
import os
import sys

# Where csrc/ is in a source checkout (an editable install); a wheel does not carry it.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE_PATTERNS = ("csrc/*.cpp", "csrc/cpu/*.cpp", "csrc/cpu/isa/*.cpp")
# -fopenmp: at::parallel_for is a header template that runs serially unless the including file
# is compiled with OpenMP; the GOMP symbols it calls resolve to the libgomp libtorch already
# loaded (no link flag, so no second OpenMP runtime). -Wno-psabi: wide GCC vector types in the
# per-ISA files (csrc/cpu/isa/*.cpp set their own `#pragma GCC target`) trigger ABI notes that
# do not apply (they never cross a non-inline call boundary between ISAs).
COMPILE_FLAGS = ["-O3", "-fopenmp", "-Wno-psabi"]
# Set to "1" to build nothing, ahead of time or on first use: fastdw then runs on CPU on the
# reference backend, and `python -m fastdw info` says why.
NO_EXTENSION_SWITCH = "FASTDW_NO_EXTENSION"

CUDA_SWITCH = "FASTDW_BUILD_CUDA"
CUDA_EXTENSION = "fastdw.kernels._C_cuda"
# Written by setup.py beside the extension's path when it skips the build: the reason, one line.
CUDA_SKIP_NOTE = "_C_cuda.skipped"
DEFAULT_CUDA_ARCHS = "8.0;9.0"
# The registration (g++) and the kernels (nvcc): two compilers at once under ninja.
CUDA_SOURCES = ("csrc/cuda/register_cuda.cpp", "csrc/cuda/kernels.cu")
CUDA_CXX_FLAGS = ["-O3", "-std=c++20"]
CUDA_NVCC_FLAGS = ["-O3", "-std=c++20"]
# The CUDA runtime linked statically and its symbols kept private: the library then loads
# without libcudart or a driver, and its launches do not depend on which libcudart torch has.
CUDA_LIBRARIES = ["cudart_static", "rt", "dl", "pthread"]
CUDA_LINK_FLAGS = ["-Wl,--exclude-libs,libcudart_static.a"]


def sources(root=None):
    """The extension's C++ sources under `root` (default SOURCE_ROOT), relative to it, in a
    fixed order."""
    root = root or SOURCE_ROOT
    return [path for pattern in SOURCE_PATTERNS
            for path in sorted(glob.glob(pattern, root_dir=root))]


def import_as_extension(library_path):
    """Import the compiled library at `library_path` as the module fastdw._C (its init function
    is PyInit__C whatever the file is called) and return it."""
    spec = importlib.util.spec_from_file_location("fastdw._C", library_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["fastdw._C"] = module
    return module


def build_cache(kind, root, paths, flags):
    """Where a build of the files `paths` (relative to `root`) with compiler flags `flags` goes:
    $FASTDW_EXTENSION_CACHE, else ~/.cache/fastdw (or $XDG_CACHE_HOME/fastdw), in a folder
    named for `kind`, torch, Python and a hash of the flags, the paths and the files."""
    import torch
    digest = hashlib.sha256(" ".join(flags).encode())
    for path in paths:
        digest.update(path.encode())
        with open(os.path.join(root, path), "rb") as f:
            digest.update(f.read())
    base = os.environ.get("FASTDW_EXTENSION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fastdw")
    version = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}"
    return os.path.join(base, f"{kind}-{version}-{digest.hexdigest()[:16]}")


def cache_directory(root):
    """Where the first-use build of fastdw._C goes (build_cache)."""
    headers = [path for pattern in SOURCE_PATTERNS
               for path in sorted(glob.glob(pattern.replace(".cpp", ".h"), root_dir=root))]
    return build_cache("cpp", root, sources(root) + headers, COMPILE_FLAGS)


@contextlib.contextmanager
def _locked(directory):
    """An exclusive lock on `directory`, released when the block ends or the process dies."""
    import fcntl
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def compile_on_first_use(root):
    """Build fastdw._C from the sources under `root` into cache_directory() unless it is there
    already, import it, and return (module, directory)."""
    import torch.utils.cpp_extension as cpp_extension
    directory = cache_directory(root)
    library = os.path.join(directory, "fastdw_first_use.so")
    # Written after a build that finished: a build killed half-way (whose library may exist,
    # truncated) is started again from scratch.
    finished = os.path.join(directory, "finished")
    with _locked(directory):
        if not os.path.exists(finished):
            print(f"fastdw: compiling the C++ CPU kernels once for this torch into {directory} "
                  f"(a few minutes; later runs load them from there)", file=sys.stderr,
                  flush=True)
            if os.path.exists(library):
                os.remove(library)
            cpp_extension.load(
                name="fastdw_first_use", build_directory=directory,
                sources=[os.path.join(root, path) for path in sources(root)],
                extra_cflags=COMPILE_FLAGS, is_python_module=False, verbose=False)
            open(finished, "w").close()
    return import_as_extension(library), directory


def compile_instead(missing):
    """Where `import fastdw._C` failed with ImportError `missing`: (the extension compiled on
    first use, how) or (None, why there is none)."""
    if os.environ.get(NO_EXTENSION_SWITCH) == "1":
        return None, f"fastdw._C was not built ({missing}) and {NO_EXTENSION_SWITCH}=1"
    if not sources(SOURCE_ROOT):
        return None, (f"fastdw._C was not built ({missing}) and the C++ sources are not "
                      f"installed; install from a source checkout (pip install -e .)")
    try:
        extension, directory = compile_on_first_use(SOURCE_ROOT)
    except (OSError, RuntimeError, ImportError) as err:  # no compiler, no ninja, a build error
        return None, f"fastdw._C was not built ({missing}) and compiling it failed: {err}"
    return extension, f"compiled on first use into {directory}"


def cuda_toolkit(environ=None):
    """The root of the CUDA toolkit to build with (it holds bin/nvcc and
    include/cuda_runtime.h), or None: $CUDA_HOME or $CUDA_PATH where set, else the toolkit of
    the nvcc on PATH where that is a toolkit's (not a wrapper script elsewhere), else
    /usr/local/cuda."""
    import shutil
    environ = os.environ if environ is None else environ
    chosen = [environ[name] for name in ("CUDA_HOME", "CUDA_PATH") if environ.get(name)]
    on_path = shutil.which("nvcc", path=environ.get("PATH", os.defpath))
    candidates = chosen or ([os.path.dirname(os.path.dirname(os.path.realpath(on_path)))]
                            if on_path else []) + ["/usr/local/cuda"]
    return next((root for root in candidates
                 if os.path.isfile(os.path.join(root, "bin", "nvcc"))
                 and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))), None)


def nvcc_version(root):
    """(major, minor) of the nvcc in the toolkit at `root`."""
    import re
    import subprocess
    out = subprocess.run([os.path.join(root, "bin", "nvcc"), "--version"], capture_output=True,
                         text=True, check=True).stdout
    return tuple(int(v) for v in re.search(r"release (\d+)\.(\d+)", out).groups())


def cuda_build_decision(environ, torch_cuda, toolkit, toolkit_version):
    """Whether setup.py builds fastdw.kernels._C_cuda: (True, "") or (False, why not).
    `torch_cuda` is torch.version.cuda, `toolkit` cuda_toolkit(), `toolkit_version` its nvcc's
    (major, minor). Raises RuntimeError when FASTDW_BUILD_CUDA=1 cannot be honoured, or
    FASTDW_BUILD_CUDA has a value other than auto, 0 and 1."""
    mode = environ.get(CUDA_SWITCH) or "auto"
    if mode not in ("auto", "0", "1"):
        raise RuntimeError(f"{CUDA_SWITCH} must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False, f"{CUDA_SWITCH}=0"
    if torch_cuda is None:
        missing = "torch is a build without CUDA (torch.version.cuda is None)"
    elif toolkit is None:
        missing = ("nvcc (the CUDA toolkit) was not found: set CUDA_HOME or put nvcc on PATH")
    elif toolkit_version[0] != int(torch_cuda.split(".")[0]):
        missing = (f"nvcc in {toolkit} is CUDA {'.'.join(map(str, toolkit_version))} but torch "
                   f"is built with CUDA {torch_cuda} (the major versions must match)")
    else:
        return True, ""
    if mode == "1":
        raise RuntimeError(f"{CUDA_SWITCH}=1 but {missing}")
    return False, missing


def cuda_archs(environ):
    """TORCH_CUDA_ARCH_LIST where set, else DEFAULT_CUDA_ARCHS."""
    return environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS


def cuda_arch_names(arch_list):
    """What the compiled code runs on, for `python -m fastdw info`: "8.0;9.0+PTX" ->
    "sm_80,sm_90,compute_90" (no spaces or quotes: it reaches the C++ as a macro)."""
    names = []
    for arch in arch_list.replace(" ", ";").split(";"):
        if arch:
            number = arch.split("+")[0].replace(".", "")
            names.append(f"sm_{number}")
            if arch.endswith("+PTX"):
                names.append(f"compute_{number}")
    return ",".join(names)
