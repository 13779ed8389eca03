"""The README's API tour runs as written (with the ImageNet checkpoint in a temporary hub cache)."""
import pathlib
import re
import shutil

import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_api_tour_runs(checkpoint, tmp_path, monkeypatch):
    tour = re.search(r"## API tour\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # follow TORCH_HOME even after set_dir()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, tmp_path / "hub" / "checkpoints")
    namespace = {}
    exec(compile(tour, str(README), "exec"), namespace)
    assert namespace["y"].shape == (8, 24, 28, 28)
    assert namespace["y"].is_contiguous(memory_format=torch.channels_last)
    assert len(namespace["labels"]) == 1000
    if namespace["fastdw"].info()["cpp"]["usable"]:
        assert namespace["logits"].shape == (1, 1000)
