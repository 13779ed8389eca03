"""timm's layers and blocks for the convert tests, skipped (naming timm) where it is absent."""
import types

import pytest


@pytest.fixture
def timm_parts():
    """timm's ConvNormAct, BatchNormAct2d (timm.layers) and its EfficientNet blocks
    (InvertedResidual, DepthwiseSeparableConv, SqueezeExcite: timm defines them in
    timm.models._efficientnet_blocks and exports them nowhere else)."""
    layers = pytest.importorskip("timm.layers", reason="needs timm (pip install timm)")
    blocks = pytest.importorskip("timm.models._efficientnet_blocks",
                                 reason="needs timm (pip install timm)")
    return types.SimpleNamespace(
        ConvNormAct=layers.ConvNormAct, BatchNormAct2d=layers.BatchNormAct2d,
        InvertedResidual=blocks.InvertedResidual, SqueezeExcite=blocks.SqueezeExcite,
        DepthwiseSeparableConv=blocks.DepthwiseSeparableConv)
