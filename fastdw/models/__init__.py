"""MobileNet models built from fastdw.nn modules. V2/V3 state_dicts are interchangeable with
torchvision's; the weight enums are torchvision's own (transforms(), meta["categories"])."""
from torchvision.models import (MobileNet_V2_Weights, MobileNet_V3_Large_Weights,
                                MobileNet_V3_Small_Weights)

from fastdw.models.mobilenet_v1 import MobileNetV1, mobilenet_v1
from fastdw.models.mobilenet_v2 import MobileNetV2, mobilenet_v2
from fastdw.models.mobilenet_v3 import MobileNetV3, mobilenet_v3_large, mobilenet_v3_small
from fastdw.models.weights import WeightsUnavailableError
from fastdw.nn.program import register_head

# Exactly these classes (not subclasses, whose forward may differ) are heads freeze() runs.
for _cls in (MobileNetV1, MobileNetV2, MobileNetV3):
    register_head(_cls)
del _cls

__all__ = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
           "MobileNetV1", "MobileNetV2", "MobileNetV3", "MobileNet_V2_Weights",
           "MobileNet_V3_Large_Weights", "MobileNet_V3_Small_Weights", "WeightsUnavailableError"]
