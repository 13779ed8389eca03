"""A NaN pixel makes a whole model's logits NaN, as in torchvision: no kernel of the eval
program or of the module path clamps it away (tests/ops/test_nonfinite.py has the per-op
cases)."""
import pytest
import torch
import torchvision

import fastdw.models


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small"])
def test_a_nan_pixel_reaches_every_logit(name, randomize_bn):
    tv = randomize_bn(getattr(torchvision.models, name)(num_classes=10)).eval()
    model = getattr(fastdw.models, name)(num_classes=10).eval()
    model.load_state_dict(tv.state_dict())
    x = torch.randn(1, 3, 32, 32)
    x[0, 1, 5, 7] = float("nan")
    with torch.no_grad():
        expected = tv(x)
        # the first call runs module by module, the next ones the eval program
        outs = [model(x) for _ in range(3)]
    assert expected.isnan().all()
    for out in outs:
        assert out.isnan().all()
