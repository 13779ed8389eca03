"""`python -m fastdw bench`: the report writer on made-up figures (every number checked), and
the command end to end on one small model, two providers and one layer (about 30 s)."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

import fastdw
import fastdw.backend
from fastdw import perfmodel
from fastdw.bench import measure, report, run

PNG = b"\x89PNG\r\n\x1a\n"


def _row(kind, name, provider, ms, batch=1, rnd=1):
    return dict(kind=kind, name=name, batch=batch, provider=provider, median_ms=ms,
                min_ms=ms * 0.9, iqr_ms=0.1, calls=9, max_abs_diff=1e-6, round=rnd)


def _machine():
    return dict(date_utc="2026-12-05T00:00:00Z", cpu_model="Test CPU", cpu_flags=["avx2"],
                cpus=2, threads=2, threads_per_provider={"eager": 2}, dtype="float32",
                batch=[1], layer_batch=[1], image_size=224, gpus=[],
                versions={"torch": "2.14.1", "openvino": None}, fastdw={"version": "0.1.0"},
                python="3.11", load_average_1min={"min": 1.0, "max": 3.5}, commit="abc1234")


def test_report_writer_tables_plots_and_machine_record(tmp_path):
    plan = run.Plan(models=["mobilenet_v3_small"], batches=[1], layer_models=["mobilenet_v2"],
                    layer_batches=[1], rounds=2, reps=3, burst=4, max_seconds=1.0,
                    providers=["eager", "fastdw_cpp", "ort", "openvino"],
                    layer_providers=["eager", "fastdw_cpp"], modelled=("mobilenet_v3_small",))
    rows = [_row("model", "mobilenet_v3_small", "eager", 10.0),
            _row("model", "mobilenet_v3_small", "fastdw_cpp", 4.0),
            _row("model", "mobilenet_v3_small", "ort", 6.0),
            _row("model", "mobilenet_v3_small", "ort", 5.0, rnd=2),  # the best process counts
            _row("layer", "c16_112x112_k3_s1_relu6", "eager", 1.0),
            _row("layer", "c16_112x112_k3_s1_relu6", "fastdw_cpp", 0.25),
            dict(kind="layer", name="c16_112x112_k3_s1_relu6", batch=1, provider="compile_cl",
                 note="failed: RuntimeError: boom", round=1),
            _row("gpu", "mobilenet_v3_small", "eager", 2.0, batch=32),
            _row("gpu", "mobilenet_v3_small", "fastdw_triton", 0.5, batch=32)]
    results = dict(rows=rows, skipped={"openvino": "openvino is not installed"}, failed={},
                   threads={"eager": 2}, loads=[1.0, 3.5])
    modelled = [perfmodel.model("mobilenet_v3_small", 2, 64, "fp16")]
    folder = tmp_path / "out"
    machine = dict(_machine(), gpus=["Fake GPU"])
    paths = report.write(str(folder), plan=plan, command="python -m fastdw bench --quick",
                         results=results,
                         machine=machine, modelled=modelled, minutes=1.5)
    assert sorted(os.listdir(folder)) == sorted(os.path.basename(p) for p in paths) == sorted(
        ["report.md", "machine.json", "results.json", "latency.png", "layers.png",
         "latency_gpu.png", "modelled_mobilenet_v3_small.png", "modelled_mobilenet_v3_small.txt"])
    text = (folder / "report.md").read_text()
    # eager, fastdw_cpp, best ort process; eager / fastdw 2.5x; fastdw / fastest other 4/5
    assert "| mobilenet_v3_small | 1 | 10.00 | 4.00 | 5.00 | 2.50x | 0.80x |" in text
    assert "| 1 | c16_112x112_k3_s1_relu6 | 1.00 | 0.25 | 4.00x |" in text
    assert "compile_cl on c16_112x112_k3_s1_relu6 b1: failed: RuntimeError: boom" in text
    assert "`openvino` not run: openvino is not installed" in text
    assert "Test CPU, 2 CPUs, 2 threads per provider, float32" in text
    assert "load average 1.0-3.5" in text and "`python -m fastdw bench --quick` at" in text
    assert "## Latency per model (GPU, measured)" in text
    assert "| mobilenet_v3_small | 32 | 2.00 | 0.50 | 4.00x | 0.25x |" in text
    assert "## Modelled GPU traffic (modelled, not measured)" in text
    assert "MODELLED, not measured: mobilenet_v3_small, batch 2, 64x64, fp16" in text
    assert json.loads((folder / "machine.json").read_text())["cpu_flags"] == ["avx2"]
    titles = {name: Image.open(folder / name).text["Title"]
              for name in ("latency.png", "layers.png", "latency_gpu.png",
                           "modelled_mobilenet_v3_small.png")}
    assert "CPU latency, measured" in titles["latency.png"]
    assert "per layer, measured" in titles["layers.png"]
    assert titles["latency_gpu.png"].startswith("GPU latency, measured (CUDA events")
    assert titles["modelled_mobilenet_v3_small.png"].startswith("MODELLED, not measured")


def test_bench_command_end_to_end(tmp_path):
    cmd = [sys.executable, "-m", "fastdw", "bench", "--quick", "--models", "mobilenet_v3_small",
           "--providers", "eager", "fastdw_cpp", "--reps", "2", "--max-layers", "1",
           "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    folder, = tmp_path.iterdir()
    assert out.stdout.strip() == f"report: {folder / 'report.md'}"
    assert "[##############################] " in out.stderr  # the progress bar got to the end
    text = (folder / "report.md").read_text()
    assert "`python -m fastdw " + " ".join(cmd[3:]) + "` at" in text  # the command as typed
    timed = "cpp" in fastdw.backend.usable("cpu")
    model_row = next(line for line in text.splitlines()
                     if line.startswith("| mobilenet_v3_small | 1 |"))
    cells = model_row.strip("|").split("|")
    assert all(float(cell) > 0 for cell in cells[2:3 + timed])  # eager (and fastdw) in ms
    layer_row = next(line for line in text.splitlines()
                     if line.startswith("| 1 | c16_112x112_k3_s2_relu |"))
    assert layer_row.count("x |") == timed  # fastdw's speed-up over eager
    if not timed:
        assert "`fastdw_cpp` not run: fastdw backend 'cpp'" in text
    machine = json.loads((folder / "machine.json").read_text())
    assert machine["threads"] == 2 and machine["threads_per_provider"]["eager"] == 2
    assert machine["versions"]["torch"] and machine["cpu_model"]
    for png in ("latency.png", "layers.png", "modelled_mobilenet_v3_small.png"):
        assert (folder / png).read_bytes()[:8] == PNG


def test_the_report_says_when_the_kill_switch_was_on(tmp_path):
    fastdw.set_disabled_ops(["pwconv_bn_act"])
    try:
        record = measure.fastdw_record()
        assert record["disabled_ops"] == ["pwconv_bn_act"]
        assert "disabled ops: pwconv_bn_act" in measure.versions()
    finally:
        fastdw.set_disabled_ops(None)
    plan = run.Plan(models=["mobilenet_v3_small"], batches=[1], layer_models=[],
                    layer_batches=[1], rounds=1, reps=3, burst=4, max_seconds=1.0,
                    providers=["eager", "fastdw_cpp"], layer_providers=[], modelled=())
    results = dict(rows=[_row("model", "mobilenet_v3_small", "eager", 10.0),
                         _row("model", "mobilenet_v3_small", "fastdw_cpp", 4.0)],
                   skipped={}, failed={}, threads={"eager": 2}, loads=[1.0])
    for fastdw_record, warned in ((record, True), (dict(record, disabled_ops=[]), False)):
        folder = tmp_path / str(warned)
        report.write(str(folder), plan=plan, command="python -m fastdw bench", results=results,
                     machine=dict(_machine(), fastdw=fastdw_record), modelled=[], minutes=1.0)
        text = (folder / "report.md").read_text()
        assert ("**The kill switch was on** (FASTDW_DISABLE_OPS): pwconv_bn_act" in text) == warned


@pytest.mark.parametrize("flag", ["--rounds", "--reps", "--threads", "--max-layers", "--batch"])
def test_bench_refuses_counts_below_one_by_name(flag, capsys):
    # Zero rounds or threads used to write an empty report and exit 0.
    from fastdw.__main__ import main
    with pytest.raises(SystemExit) as done:
        main(["bench", "--quick", flag, "0"])
    assert done.value.code == 2
    assert f"argument {flag}: must be >= 1, got 0" in capsys.readouterr().err
