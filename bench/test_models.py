"""Model-level CPU benchmarks: MobileNetV1 (fastdw only) / V2 / V3-Large / V3-Small at 224x224,
eval, no_grad, fp32, each provider of _providers.MODEL_PROVIDERS side by side
(`--benchmark-group-by=group`). See bench/README.md."""
import pytest

from fastdw.bench.providers import MODEL_PROVIDERS, MODELS, model_workload

pytestmark = pytest.mark.models


@pytest.mark.parametrize("provider", MODEL_PROVIDERS, ids=lambda p: p.name)
@pytest.mark.parametrize("model", MODELS)
def test_model(run_provider, batch, model, provider):
    run_provider(model_workload(model, batch), provider)
