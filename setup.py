"""Build entry point: `pip install --no-build-isolation -e .` (it builds against the torch you have).

fastdw is pure Python plus optional compiled backends. fastdw._C (csrc/*.cpp + csrc/cpu) is
built whenever torch is importable at build time; if it cannot be built, `import fastdw` still
works and fastdw.info() says why the cpp backend is unusable. Package metadata gives only lower
bounds so installing fastdw never replaces a user's torch; requirements.txt pins the tested stack.
"""
import glob
import os

from setuptools import find_packages, setup


def _extensions():
    """fastdw._C: the schemas (csrc/schemas.cpp), the test-only ops (csrc/testing.cpp), the Python
    module with the eval caches' stamp check (csrc/module.cpp, csrc/stamp.cpp), the ATen-facing
    op files (csrc/cpu/*.cpp) and the vectorised loops compiled once per instruction set
    (csrc/cpu/isa/*.cpp, which set their own `#pragma GCC target`; the runtime choice is in
    csrc/cpu/isa/select.cpp)."""
    if os.environ.get("FASTDW_NO_EXTENSION") == "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob("csrc/*.cpp", root_dir=here)) \
        + sorted(glob.glob("csrc/cpu/*.cpp", root_dir=here)) \
        + sorted(glob.glob("csrc/cpu/isa/*.cpp", root_dir=here))
    ext = CppExtension(
        "fastdw._C", sources,
        # -fopenmp: at::parallel_for is a header template that runs serially unless the including
        # file is compiled with OpenMP; the GOMP symbols it calls resolve to the libgomp libtorch
        # already loaded (no link flag, so no second OpenMP runtime). -Wno-psabi: wide GCC vector
        # types in the per-ISA files trigger ABI notes that do not apply (they never cross a
        # non-inline call boundary between ISAs).
        extra_compile_args=["-O3", "-fopenmp", "-Wno-psabi"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="fastdw",
    version="0.1.0",
    description="Fused depthwise / inverted-residual kernels and MobileNet models for PyTorch",
    packages=find_packages(include=["fastdw", "fastdw.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "torchvision>=0.19", "numpy"],
    extras_require={
        "demo": ["scikit-image"],
        # onnx: the TorchScript ONNX exporter needs it, and its reference evaluator runs the
        # exported models in tests/reliability/test_autograd_and_compat.py.
        "test": ["pytest", "pytest-benchmark", "scikit-image", "matplotlib", "onnx>=1.15",
                 "hypothesis"],
        # ONNX Runtime is an optional provider of the CPU benchmarks (bench/README.md).
        "bench": ["pytest-benchmark", "onnxruntime>=1.17", "onnx>=1.15"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
