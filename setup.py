"""Build entry point.

`pip install -e .` (pip's default build isolation, where torch cannot be imported) installs the
Python package alone; fastdw._C is then compiled on first use against the torch that runs it.
`pip install --no-build-isolation -e .` builds fastdw._C now, against the torch you have. Both
take their sources and flags from fastdw/kernels/cpp_build.py, which says how. If the extension
cannot be built, `import fastdw` still works and `python -m fastdw info` says why the cpp
backend is unusable. Package metadata gives only lower bounds so installing fastdw never
replaces a user's torch; requirements.txt pins the tested stack.
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
    """fastdw._C where torch is importable now (and FASTDW_NO_EXTENSION is not 1), else none."""
    rules = _build_rules()
    if os.environ.get(rules.NO_EXTENSION_SWITCH) == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:  # pip's isolated build environment: compiled on first use instead
        return [], {}
    ext = CppExtension("fastdw._C", rules.sources(HERE), extra_compile_args=rules.COMPILE_FLAGS)
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
