"""What the GPU benchmarks time and how: workloads on a CUDA device in fp32/fp16/bf16, the
providers that run them, and CUDA-event timing after an L2 flush. Shapes, stock models and BN
calibration come from fastdw.bench.providers (the CPU benchmarks' table), so CPU and GPU
benchmarks time the same layers. Used by bench/gpu/ (pytest-benchmark) and by
`python -m fastdw bench` where a CUDA device is present.

No machine of this project has a GPU: this code is written to run the day one is available;
here bench/gpu skips (NO_CUDA) and the command times CPU providers only. On a GPU machine a
fastdw provider whose backend cannot run (the CUDA extension not built, say) skips with the
backend's own reason (unavailable()).
"""
import copy
import dataclasses
import functools
from typing import Callable

import torch

from fastdw.bench import providers as _providers

BATCHES = (1, 32, 256)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Zeroing a buffer larger than any GPU's L2 (H100: 50 MB) before each timed run evicts the
# previous run's operands, so every run streams its inputs from DRAM as in a real network.
L2_FLUSH_BYTES = 256 * 2 ** 20
# Relative L2 error of a provider's output against stock eager in the same dtype. Loose on
# purpose: it rejects a wrong kernel (error ~1), not a precision regression (tests/ops does that).
# fp32 is loose too because cuDNN runs fp32 convolutions in TF32 by default.
TOLERANCE = {"fp32": 1e-2, "fp16": 2e-2, "bf16": 1e-1}
NO_CUDA = None if torch.cuda.is_available() else "needs a CUDA device; none here"


@dataclasses.dataclass
class Workload:
    name: str
    group: str                      # pytest-benchmark group: one workload, every provider
    dtype: str
    x: torch.Tensor                 # NCHW, on the GPU, in `dtype`
    module: torch.nn.Module         # stock eager module, eval, NCHW, on the GPU, in `dtype`
    fastdw: Callable[[str], Callable]  # builds fastdw's fn(x) on the backend named
    about: dict

    def oracle(self):
        with torch.no_grad():
            return self.module(self.x)


def _on_gpu(module, x, dtype):
    """BN statistics calibrated on `x` in fp32 (see _providers.calibrate_bn), then `dtype`."""
    module = _providers.calibrate_bn(module.cuda(), x.float())
    return module.to(DTYPES[dtype])


def op_workload(layer: _providers.DepthwiseLayer, batch: int, dtype: str) -> Workload:
    torch.manual_seed(0)
    x = torch.randn(batch, layer.channels, layer.height, layer.width, device="cuda")
    module = _on_gpu(copy.deepcopy(layer.module), x, dtype)
    x = x.to(DTYPES[dtype])

    def fastdw_fn(backend):
        from fastdw import ops
        scale, shift = (t.detach() for t in ops.fold_bn(module[1]))
        return functools.partial(ops.dwconv_bn_act, weight=module[0].weight.detach(),
                                 scale=scale, shift=shift, stride=layer.stride,
                                 padding=layer.padding, dilation=layer.dilation, act=layer.act,
                                 backend=backend)

    return Workload(f"{dtype}-b{batch}-{layer.name}",
                    f"dwconv_bn_act {dtype} b{batch} {layer.name}",
                    dtype, x, module, fastdw_fn,
                    dict(op="dwconv_bn_act", batch=batch, shape=layer.name,
                         used_by=list(layer.users)))


def model_workload(model_name: str, batch: int, dtype: str) -> Workload:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, _providers.IMAGE_SIZE, _providers.IMAGE_SIZE, device="cuda")
    module = _on_gpu(_providers.stock_model(model_name), x, dtype)
    x = x.to(DTYPES[dtype])

    def fastdw_fn(backend):
        import fastdw
        import fastdw.models
        model = getattr(fastdw.models, model_name)()
        model.load_state_dict(module.state_dict(), strict=True)
        model = model.eval().to(device="cuda", dtype=DTYPES[dtype],
                                memory_format=torch.channels_last)

        def run(inp):
            with fastdw.use_backend(backend):
                return model(inp)
        return run

    return Workload(f"{model_name}-{dtype}-b{batch}", f"{model_name} {dtype} b{batch}", dtype, x,
                    module, fastdw_fn, dict(model=model_name, batch=batch))


@dataclasses.dataclass(frozen=True)
class Provider:
    name: str
    about: str
    make: Callable[[Workload], Callable]
    channels_last: bool
    stock: bool  # a stock PyTorch path: "PyTorch's best" is the fastest of these

    def build(self, workload: Workload):
        fn = self.make(workload)
        x = workload.x
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return fn, x


def _channels_last(module):
    return copy.deepcopy(module).to(memory_format=torch.channels_last)


def _max_autotune(workload):
    # A fresh dynamo state per module: every test compiles the same forward code object.
    torch._dynamo.reset()
    return torch.compile(_channels_last(workload.module), mode="max-autotune", fullgraph=True,
                         dynamic=False)


def unavailable(backend):
    """Why fastdw's `backend` cannot run on CUDA tensors in this process, or None where it can:
    no CUDA device, or the backend's own reason (fastdw.backend.info), e.g. the CUDA extension
    not built."""
    import fastdw.backend
    if NO_CUDA is not None:  # TRITON_INTERPRET=1 makes triton "usable" on CPU tensors only
        return f"fastdw {backend} backend cannot run on CUDA: {NO_CUDA}"
    if backend in fastdw.backend.usable("cuda"):
        return None
    about = fastdw.backend.info()[backend]
    reason = about["reason"] or f"runs on {', '.join(about['devices'])} tensors only"
    return f"fastdw {backend} backend cannot run on CUDA: {reason}"


def _fastdw(backend):
    def make(workload):
        reason = unavailable(backend)
        if reason is not None:
            raise _providers.Unavailable(reason)
        return workload.fastdw(backend)
    return make


PROVIDERS = [
    Provider("eager", "stock PyTorch eager, NCHW (cuDNN conv, BN, act as separate kernels)",
             lambda w: w.module, channels_last=False, stock=True),
    Provider("eager_cl", "stock PyTorch eager, module and input channels_last",
             lambda w: _channels_last(w.module), channels_last=True, stock=True),
    Provider("compile_max_autotune", "torch.compile(mode='max-autotune', fullgraph, static "
             "shapes, inductor freezing), channels_last", _max_autotune, channels_last=True,
             stock=True),
    Provider("fastdw_triton", "fastdw on backend='triton', channels_last input",
             _fastdw("triton"), channels_last=True, stock=False),
    Provider("fastdw_cuda", "fastdw on backend='cuda' (csrc/cuda kernels; ops they do not cover "
             "run on reference), channels_last input", _fastdw("cuda"), channels_last=True,
             stock=False),
]
# The fastdw providers, judged against the design targets (bench/gpu/compare_gpu.py).
FASTDW_PROVIDERS = tuple(p.name for p in PROVIDERS if not p.stock)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def l2_flusher():
    """A function that evicts the GPU's L2 (zeroes a larger buffer) and waits for it."""
    buffer = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")

    def flush():
        buffer.zero_()
        torch.cuda.synchronize()  # the flush must not overlap the timed run
    return flush


def event_timer(fn, x):
    """(timed, times): timed() runs fn(x) once between two CUDA events, waits for it and
    appends its device time in ms to `times`."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []

    def timed():
        start.record()
        fn(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return timed, times

