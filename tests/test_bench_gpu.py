"""fastdw.bench.gpu and bench/gpu/compare_gpu.py without a GPU: the providers, the reason a
fastdw provider gives where its backend cannot run, and the comparison table's verdicts."""
import importlib.util
import json
import pathlib

import pytest
import torch

import fastdw.backend
from fastdw.bench import gpu
from fastdw.bench.providers import Unavailable

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _compare_gpu():
    spec = importlib.util.spec_from_file_location("compare_gpu",
                                                  ROOT / "bench" / "gpu" / "compare_gpu.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_providers_are_stock_then_both_fastdw_backends():
    names = [p.name for p in gpu.PROVIDERS]
    assert names == ["eager", "eager_cl", "compile_max_autotune", "fastdw_triton", "fastdw_cuda"]
    assert gpu.FASTDW_PROVIDERS == ("fastdw_triton", "fastdw_cuda")
    assert all(p.channels_last for p in gpu.PROVIDERS if p.name in gpu.FASTDW_PROVIDERS)


def _workload(built):
    """A workload whose fastdw builder records the backend it is asked for."""
    x = torch.randn(1, 4, 5, 5)
    return gpu.Workload("w", "g", "fp32", x, torch.nn.Identity(), lambda backend:
                        built.append(backend) or (lambda t: t), {})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip reason where no GPU is")
@pytest.mark.parametrize("name, backend", [("fastdw_triton", "triton"), ("fastdw_cuda", "cuda")])
def test_a_fastdw_provider_without_a_gpu_names_why_and_builds_nothing(name, backend):
    provider = next(p for p in gpu.PROVIDERS if p.name == name)
    built = []
    with pytest.raises(Unavailable) as err:
        provider.build(_workload(built))
    assert built == []
    assert str(err.value) == f"fastdw {backend} backend cannot run on CUDA: {gpu.NO_CUDA}"
    assert gpu.unavailable(backend) == str(err.value)


def test_the_cuda_provider_says_when_the_extension_is_not_built(monkeypatch):
    monkeypatch.setattr(gpu, "NO_CUDA", None)  # as on a GPU machine
    reason = "the CUDA extension fastdw.kernels._C_cuda is not built (no nvcc)"
    info = fastdw.backend.info()
    info["cuda"] = dict(info["cuda"], usable=False, reason=reason)
    monkeypatch.setattr(fastdw.backend, "usable", lambda device_type: ["reference"])
    monkeypatch.setattr(fastdw.backend, "info", lambda: info)
    provider = next(p for p in gpu.PROVIDERS if p.name == "fastdw_cuda")
    with pytest.raises(Unavailable, match="fastdw cuda backend cannot run on CUDA: the CUDA "
                                          r"extension fastdw\.kernels\._C_cuda is not built"):
        provider.build(_workload([]))


def test_a_usable_backend_builds_its_own_fastdw_function(monkeypatch):
    monkeypatch.setattr(gpu, "NO_CUDA", None)
    monkeypatch.setattr(fastdw.backend, "usable", lambda device_type: ["reference", "cuda"])
    built = []
    workload = _workload(built)
    fn, x = next(p for p in gpu.PROVIDERS if p.name == "fastdw_cuda").build(workload)
    assert built == ["cuda"]
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous()


def _bench(group, provider, median):
    return {"group": group, "extra_info": {"provider": provider,
                                           "cuda_event_ms": {"median": median}}}


def test_compare_gpu_judges_each_fastdw_provider(tmp_path, capsys):
    group = "dwconv_bn_act fp16 b32 dw3x3_s1_c144_56"
    benchmarks = [_bench(group, "eager", 0.30), _bench(group, "eager_cl", 0.20),
                  _bench(group, "compile_max_autotune", 0.15),
                  _bench(group, "fastdw_triton", 0.08), _bench(group, "fastdw_cuda", 0.125)]
    model = "mobilenet_v2 fp16 b256"
    benchmarks += [_bench(model, "compile_max_autotune", 3.0), _bench(model, "fastdw_triton", 2.5)]
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    _compare_gpu().main([str(path)])
    lines = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[4:10] == ["fastdw_triton ms", "fastdw_triton x best eager layout",
                            "fastdw_triton x compile", "fastdw_cuda ms",
                            "fastdw_cuda x best eager layout", "fastdw_cuda x compile"]
    dw = [c.strip() for c in lines[2].strip("|").split("|")]
    # triton: 0.20 / 0.08 = 2.5x the best eager layout (met); cuda: 0.20 / 0.125 = 1.6x (not).
    assert dw[4:10] == ["0.0800", "2.50x", "1.88x", "0.1250", "1.60x", "1.20x"]
    assert dw[10] == (">= 2x vs best eager layout: fastdw_triton met, fastdw_cuda not met")
    whole = [c.strip() for c in lines[3].strip("|").split("|")]
    assert whole[7:10] == ["-", "-", "-"]
    assert whole[10] == ">= 1.5x vs torch.compile: fastdw_triton not met, fastdw_cuda no figure"
