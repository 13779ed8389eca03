"""GPU benchmarks of fastdw.ops.dwconv_bn_act: every depthwise conv+BN+act shape of torchvision's
MobileNetV2 / V3-Large / V3-Small at 224x224, batch 1/32/256, fp32/fp16/bf16, each provider of
fastdw.bench.gpu.PROVIDERS side by side (--benchmark-group-by=group). See bench/gpu/README.md."""
import pytest

from fastdw.bench.gpu import BATCHES, DTYPES, NO_CUDA, PROVIDERS, op_workload
from fastdw.bench.providers import depthwise_layers

pytestmark = [pytest.mark.dwconv_bn_act,
              pytest.mark.skipif(NO_CUDA is not None, reason=str(NO_CUDA))]


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_size", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("layer", depthwise_layers(), ids=lambda layer: layer.name)
def test_dwconv_bn_act(run_gpu, layer, batch_size, dtype, provider):
    run_gpu(op_workload(layer, batch_size, dtype), provider)
