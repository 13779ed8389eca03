"""Build entry point: `pip install --no-build-isolation -e .` (it builds against the torch you have).

fastdw is pure Python plus optional compiled backends; the C++/CUDA extensions are added here by
their own modules as they land. Package metadata gives only lower bounds so installing fastdw
never replaces a user's torch; requirements.txt pins the tested stack.
"""
from setuptools import find_packages, setup

setup(
    name="fastdw",
    version="0.1.0",
    description="Fused depthwise / inverted-residual kernels and MobileNet models for PyTorch",
    packages=find_packages(include=["fastdw", "fastdw.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "torchvision>=0.19", "numpy"],
    extras_require={
        "demo": ["scikit-image"],
        "test": ["pytest", "pytest-benchmark", "scikit-image"],
    },
)
