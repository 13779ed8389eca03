"""fastdw: fused depthwise / inverted-residual kernels and MobileNet models for PyTorch."""
from fastdw import ops
from fastdw.backend import (BackendUnavailableError, disabled_ops, format_info, info,
                            set_backend, set_disabled_ops, use_backend)

__version__ = "0.1.0"
__all__ = ["ops", "nn", "models", "convert", "info", "format_info", "use_backend", "set_backend",
           "set_disabled_ops", "disabled_ops", "BackendUnavailableError"]


def __getattr__(name):
    # nn and models import torchvision; load them on first use to keep `import fastdw` light.
    import importlib
    if name in ("nn", "models"):
        return importlib.import_module(f"fastdw.{name}")
    if name == "convert":  # fastdw.nn.convert.convert_model (fastdw.nn.convert: in place)
        return importlib.import_module("fastdw.nn.convert").convert_model
    raise AttributeError(f"module 'fastdw' has no attribute {name!r}")
