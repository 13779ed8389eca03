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


def latest_bench_table():
    """(report text, model latency table) of bench/latest/report.md, the last full run of
    `python -m fastdw bench` kept in the repository."""
    text = (README.parent / "bench" / "latest" / "report.md").read_text()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## Latency per model"))
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))
    return text, "\n".join(lines[first:end])


def test_performance_table_is_the_latest_full_bench_report():
    """The README's CPU table is the one `python -m fastdw bench` wrote, with its date, not a
    hand-kept copy that can drift from the report."""
    report, table = latest_bench_table()
    assert "`python -m fastdw bench` at fastdw commit" in report, "not a full run's report"
    date = re.search(r"# fastdw benchmark, (\S+)", report).group(1)
    section = re.search(r"## Performance today.*?(?=\n## )", README.read_text(), re.S).group(0)
    assert date in section and table in section
