"""GPU benchmarks of whole models: MobileNetV1 / V2 / V3-Large / V3-Small at 224x224, eval,
no_grad, batch 1/32/256, fp32/fp16/bf16, each provider of fastdw.bench.gpu.PROVIDERS side by
side (--benchmark-group-by=group). See bench/gpu/README.md."""
import pytest

from fastdw.bench.gpu import BATCHES, DTYPES, NO_CUDA, PROVIDERS, model_workload
from fastdw.bench.providers import MODELS

pytestmark = [pytest.mark.models, pytest.mark.skipif(NO_CUDA is not None, reason=str(NO_CUDA))]


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_size", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("model", MODELS)
def test_model(run_gpu, model, batch_size, dtype, provider):
    run_gpu(model_workload(model, batch_size, dtype), provider)
