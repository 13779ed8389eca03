import pytest
import torch


@pytest.fixture
def randomize_bn():
    """Give every BatchNorm2d of a module non-trivial affine parameters and running stats, so
    folding is actually exercised (fresh BNs fold to the identity)."""
    def apply(module, seed=0):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for bn in module.modules():
                if isinstance(bn, torch.nn.BatchNorm2d):
                    n = bn.num_features
                    bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    bn.bias.copy_(torch.randn(n, generator=g) * 0.2)
                    bn.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                    bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        return module
    return apply
