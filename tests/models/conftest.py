import pytest
import torch

import fastdw.models.weights


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


@pytest.fixture
def no_weights_package(monkeypatch):
    """As on a machine without the offline weights package (fastdw.models.weights.
    OFFLINE_PACKAGES), so a missing checkpoint must come from the hub cache or a download."""
    monkeypatch.setattr(fastdw.models.weights, "OFFLINE_PACKAGES", {})
