"""Op-level CPU benchmarks of fastdw.ops.dwconv_bn_act: every depthwise layer shape of
torchvision's MobileNetV2 / V3-Large / V3-Small at 224x224, fp32, each provider of
_providers.OP_PROVIDERS side by side (`--benchmark-group-by=group`). See bench/README.md."""
import pytest

from fastdw.bench.providers import OP_PROVIDERS, depthwise_layers, op_workload

pytestmark = pytest.mark.dwconv_bn_act


@pytest.mark.parametrize("provider", OP_PROVIDERS, ids=lambda p: p.name)
@pytest.mark.parametrize("layer", depthwise_layers(), ids=lambda layer: layer.name)
def test_dwconv_bn_act(run_provider, batch, layer, provider):
    run_provider(op_workload(layer, batch), provider)
