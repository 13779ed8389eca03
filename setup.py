"""Build entry point.

`pip install -e .` (pip's default build isolation, where torch cannot be imported) installs the
Python package alone; fastdw._C is then compiled on first use against the torch that runs it.
`pip install --no-build-isolation -e .` builds fastdw._C now, against the torch you have, and
fastdw.kernels._C_cuda (the CUDA kernels) where nvcc is found: FASTDW_BUILD_CUDA=auto|0|1 and
TORCH_CUDA_ARCH_LIST (default "8.0;9.0") control it. All take their sources and flags from
fastdw/kernels/cpp_build.py, which says how. If an extension cannot be built, `import fastdw`
still works and `python -m fastdw info` says why its backend is unusable. Package metadata
gives only lower bounds so installing fastdw never replaces a user's torch; requirements.txt
pins the tested stack.
"""
import importlib.util
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _build_rules():
    """fastdw/kernels/cpp_build.py, loaded by path: importing fastdw would import torch."""
    path = os.path.join(HERE, "fastdw", "kernels", "cpp_build.py")
    spec = importlib.util.spec_from_file_location("fastdw_cpp_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extensions():
    """fastdw._C where torch is importable now (and FASTDW_NO_EXTENSION is not 1), else none;
    with it fastdw.kernels._C_cuda where FASTDW_BUILD_CUDA allows (_cuda_extension)."""
    rules = _build_rules()
    if os.environ.get(rules.NO_EXTENSION_SWITCH) == "1":
        return [], {}
    try:
        import torch
    except ImportError:  # pip's isolated build environment: compiled on first use instead
        if os.environ.get(rules.CUDA_SWITCH) == "1":
            raise RuntimeError(f"{rules.CUDA_SWITCH}=1 but torch cannot be imported while "
                               f"building (pip's build isolation): install with "
                               f"pip install --no-build-isolation")
        return [], {}
    build, why_not = _cuda_decision(rules, torch.version.cuda)
    # Imported after CUDA_HOME is settled: torch.utils.cpp_extension reads it on import.
    from torch.utils.cpp_extension import BuildExtension, CppExtension
    ext = CppExtension("fastdw._C", rules.sources(HERE), extra_compile_args=rules.COMPILE_FLAGS)
    extensions = [ext] + ([_cuda_extension(rules)] if build else [])
    base = BuildExtension.with_options(use_ninja=True)

    class Build(base):
        """Builds the extensions, then leaves fastdw.kernels._C_cuda's skip note where it
        would be (or removes a stale one): fastdw/kernels/cuda.py reports it."""

        def run(self):
            super().run()
            note = os.path.join(os.path.dirname(self.get_ext_fullpath(rules.CUDA_EXTENSION)),
                                rules.CUDA_SKIP_NOTE)
            if build:
                if os.path.exists(note):
                    os.remove(note)
            else:
                os.makedirs(os.path.dirname(note), exist_ok=True)
                with open(note, "w") as f:
                    f.write(why_not + "\n")

    return extensions, {"build_ext": Build}


def _cuda_decision(rules, torch_cuda):
    """(build fastdw.kernels._C_cuda?, why not), with CUDA_HOME set to the toolkit to use."""
    toolkit = rules.cuda_toolkit()
    version = rules.nvcc_version(toolkit) if toolkit else None
    build, why_not = rules.cuda_build_decision(os.environ, torch_cuda, toolkit, version)
    if build:
        os.environ["CUDA_HOME"] = toolkit
    else:
        print(f"fastdw: not building the CUDA extension: {why_not}")
    return build, why_not


def _cuda_extension(rules):
    """fastdw.kernels._C_cuda for TORCH_CUDA_ARCH_LIST (default rules.DEFAULT_CUDA_ARCHS)."""
    from torch.utils.cpp_extension import CUDAExtension
    archs = rules.cuda_archs(os.environ)
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # torch turns it into nvcc's -gencode flags
    ext = CUDAExtension(
        rules.CUDA_EXTENSION, list(rules.CUDA_SOURCES),
        extra_compile_args={
            "cxx": rules.CUDA_CXX_FLAGS + [f"-DFASTDW_CUDA_ARCHS={rules.cuda_arch_names(archs)}"],
            "nvcc": rules.CUDA_NVCC_FLAGS},
        extra_link_args=rules.CUDA_LINK_FLAGS)
    # CUDAExtension links the shared CUDA runtime; this one is linked statically.
    ext.libraries = [lib for lib in ext.libraries if lib != "cudart"] + rules.CUDA_LIBRARIES
    return ext


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
        # exported models in tests/reliability/test_autograd_and_compat.py. onnxscript:
        # torch.onnx.export's default exporter needs it; ONNX Runtime runs what it exports in
        # tests/export. timm: fastdw.convert is tested on timm's MobileNet/EfficientNet models.
        "test": ["pytest", "pytest-benchmark", "scikit-image", "matplotlib", "onnx>=1.15",
                 "onnxscript>=0.7", "onnxruntime>=1.17", "hypothesis", "timm>=1.0"],
        # What torch.onnx.export's default exporter needs (README, "Export").
        "onnx": ["onnx>=1.15", "onnxscript>=0.7"],
        # python -m fastdw bench: matplotlib draws its plots; ONNX Runtime and OpenVINO are
        # optional providers it times where installed (bench/README.md).
        "bench": ["pytest-benchmark", "matplotlib", "onnxruntime>=1.17", "onnx>=1.15",
                  "openvino>=2024.0"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
