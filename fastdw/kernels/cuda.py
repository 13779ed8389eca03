"""The cuda backend: fastdw's hand-written CUDA kernels (csrc/cuda, issue 15).

On a GPU its ops (namespace fastdw_cuda, registered for CUDA tensors) come from the extension
fastdw.kernels._C_cuda, which setup.py builds where nvcc is found (fastdw/kernels/cpp_build.py);
where it is not built, or there is no GPU, the backend is unavailable and says why.
With FASTDW_CUDA_EMULATE=1 it runs the same kernel source on CPU tensors through fastdw's CUDA
emulator (csrc/cuda/emulator/emulator.h), as TRITON_INTERPRET=1 runs the triton backend: the
host extension csrc/cuda/emulated.cpp is compiled on first use with torch.utils.cpp_extension
(ninja) into a cache directory keyed on torch, Python and a hash of csrc/cuda, and its ops
(namespace fastdw_cuda_emu) do the launches. Both share the ops' host code, argument checks
included (csrc/cuda/host_ops.h). The emulator's run-time checks (barriers, warp collectives,
shared-memory bounds and races, alignment, launch limits) become RuntimeErrors;
FASTDW_CUDA_EMULATE_SEED, _RACECHECK and _ARCH tune it (emulator.h, options_from_env).

Ops without a kernel here are not defined, so the reference backend runs them; calls the kernel
does not cover (below) run on reference too.
"""
import glob
import os

import torch

from fastdw.contract import BlockWeights, output_memory_format, same_padding
from fastdw.kernels import cpp_build, reference

EMULATE_SWITCH = "FASTDW_CUDA_EMULATE"
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(SOURCE_ROOT, "csrc", "cuda")
COMPILE_FLAGS = ["-O2"]
# CUDA's own headers (cuda_fp16.h, cuda_bf16.h, vector_types.h) compile under g++; they come
# with a CUDA toolkit or with torch's nvidia-cuda pip packages.
HEADER_CANDIDATES = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include"),
                     "/usr/local/cuda/include"]

EMULATING = os.environ.get(EMULATE_SWITCH) == "1"
DEVICES = ("cpu",) if EMULATING else ("cuda",)
# What the kernels cover; every other call runs on reference.
COVERAGE = ("dwconv_bn_act forward is a CUDA kernel for float32/float16/bfloat16 inputs in "
            "channels_last and NCHW (any other layout through the NCHW kernel; an NCHW window "
            "over 48 KB of shared memory, or a plane of more tiles than the grid allows, as a "
            "channels_last copy), channel multipliers "
            "included; its backward is CUDA kernels for channel multiplier 1 (an NCHW input "
            "as a channels_last copy). pwconv_bn_act (forward and backward) and "
            "inverted_residual are CUDA kernels for channels_last float32/float16/bfloat16 "
            "inputs (the forward 1x1 GEMMs on tensor cores for float16/bfloat16, the "
            "backward's gradient GEMMs in float32); inverted_residual is one fused kernel (two "
            "with a squeeze-excite) where its depthwise window fits the GPU's shared memory, "
            "else the pwconv/dwconv kernels up to the depthwise (a squeeze-excite gate over "
            "the shared memory on ATen ops, then the pwconv kernel), and its backward is the "
            "pwconv/dwconv forward and backward kernels stage by stage in float32 (a "
            "squeeze-excite's vectors and gate on stock ops); every other call (float64, NCHW "
            "pwconv_bn_act and inverted_residual, dwconv_bn_act's backward with a channel "
            "multiplier) runs on reference")
NOTES = f"CUDA kernels run through fastdw's CUDA emulator on CPU tensors; {COVERAGE}"


def cuda_headers():
    """The include directory holding cuda_fp16.h, or None."""
    candidates = list(HEADER_CANDIDATES)
    try:
        import nvidia.cu13
        candidates += [os.path.join(p, "include") for p in nvidia.cu13.__path__]
    except ImportError:
        pass
    return next((d for d in candidates if os.path.exists(os.path.join(d, "cuda_fp16.h"))), None)


def sources():
    """Every file the emulator build depends on (csrc/cuda, and the block's weight list
    csrc/cpu/block_weights.h that the host ops include), in a fixed order."""
    return sorted(p for pattern in ("*.cpp", "*.cuh", "*.h", "emulator/*.h",
                                    "../cpu/block_weights.h")
                  for p in glob.glob(os.path.join(CSRC, pattern)))


def build_directory():
    """Where the emulator extension is built (cpp_build.build_cache, kind "cuda-emu")."""
    return cpp_build.build_cache("cuda-emu", CSRC, [os.path.relpath(p, CSRC) for p in sources()],
                                 COMPILE_FLAGS)


def load_emulator():
    """Compile (or find up to date) and load the emulator extension, whatever
    FASTDW_CUDA_EMULATE says (tests use it directly): (True, how) or (False, why not)."""
    if hasattr(torch.ops.fastdw_cuda_emu, "dwconv_bn_act"):
        return True, "emulated"
    headers = cuda_headers()
    if headers is None:
        return False, (f"{EMULATE_SWITCH}=1 but CUDA's headers (cuda_fp16.h) were not found in "
                       f"{HEADER_CANDIDATES} or the nvidia-cuda pip packages")
    import torch.utils.cpp_extension as cpp_extension
    directory = build_directory()
    os.makedirs(directory, exist_ok=True)
    try:  # load() takes a lock in the directory and rebuilds only what changed
        cpp_extension.load(name="fastdw_cuda_emu", sources=[os.path.join(CSRC, "emulated.cpp")],
                           extra_cflags=COMPILE_FLAGS, extra_include_paths=[headers],
                           build_directory=directory, is_python_module=False, verbose=False)
    except (OSError, RuntimeError, ImportError) as err:  # no compiler, no ninja, a build error
        return False, f"{EMULATE_SWITCH}=1 but building the CUDA emulator failed: {err}"
    return True, f"emulated, built in {directory}"


def not_built_reason(directory):
    """Why fastdw.kernels._C_cuda is missing from the package folder `directory`: the note
    setup.py leaves where it skips the build (cpp_build.CUDA_SKIP_NOTE), else how to build it."""
    name = cpp_build.CUDA_EXTENSION
    note = os.path.join(directory, cpp_build.CUDA_SKIP_NOTE)
    if os.path.exists(note):
        with open(note) as f:
            return f"the CUDA extension {name} was not built: setup.py skipped it because " \
                   f"{f.read().strip()}"
    return (f"the CUDA extension {name} is not built (fastdw was installed without compiling "
            f"it: `pip install --no-build-isolation -e .` builds it where nvcc is found)")


def load_extension():
    """Import fastdw.kernels._C_cuda, the GPU build: (True, what it was built for) or (False,
    why not)."""
    import importlib
    import importlib.util
    name = cpp_build.CUDA_EXTENSION
    if importlib.util.find_spec(name) is None:
        return False, not_built_reason(os.path.dirname(os.path.abspath(__file__)))
    try:
        importlib.import_module(name)  # registers torch.ops.fastdw_cuda
    except ImportError as err:
        return False, f"the CUDA extension {name} does not load: {err}"
    return True, f"the CUDA extension {name} is built for {torch.ops.fastdw_cuda.archs()}"


if EMULATING:
    _USABLE, _HOW = load_emulator()
else:
    _BUILT, _HOW = load_extension()
    _USABLE = _BUILT and torch.cuda.is_available()
    NOTES = f"{_HOW}; {COVERAGE}"
    if _BUILT and not _USABLE:
        _HOW += ", but there is no GPU (torch.cuda.is_available() is False)"
    if not _USABLE:
        _HOW += (f"; {EMULATE_SWITCH}=1 runs its kernels on CPU tensors through fastdw's CUDA "
                 f"emulator")


def _ops(x):
    """The GPU build's ops for CUDA tensors, the emulated ones for CPU tensors."""
    return torch.ops.fastdw_cuda if x.is_cuda else torch.ops.fastdw_cuda_emu


def unavailable():
    return None if _USABLE else _HOW


def dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act):
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or x.numel() == 0:
        return reference.dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act)
    y = _ops(x).dwconv_bn_act(x, weight, scale, shift, stride, padding, dilation, act)
    return y.contiguous(memory_format=output_memory_format(x))


def dwconv_bn_act_backward(grad, x, weight, scale, shift, stride, padding, dilation, act):
    if (x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or x.numel() == 0
            or weight.shape[0] != x.shape[1] or grad.dtype != x.dtype):
        return reference.dwconv_bn_act_backward(grad, x, weight, scale, shift, stride, padding,
                                                dilation, act)
    gx, *rest = _ops(x).dwconv_bn_act_backward(grad, x, weight, scale, shift, stride, padding,
                                                dilation, act)
    return [gx.contiguous(memory_format=output_memory_format(x)), *rest]


def pwconv_bn_act(x, weight, scale, shift, act, residual):
    if (x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or x.numel() == 0
            or (x.stride(1) != 1 and x.shape[1] != 1)):
        return reference.pwconv_bn_act(x, weight, scale, shift, act, residual)
    y = _ops(x).pwconv_bn_act(x, weight, scale, shift, act, residual)
    return y.contiguous(memory_format=output_memory_format(x))


def pwconv_bn_act_backward(grad, x, weight, scale, shift, act):
    if (x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or x.numel() == 0
            or (x.stride(1) != 1 and x.shape[1] != 1) or grad.dtype != x.dtype):
        return reference.pwconv_bn_act_backward(grad, x, weight, scale, shift, act)
    gx, *rest = _ops(x).pwconv_bn_act_backward(grad, x, weight, scale, shift, act)
    return [gx.contiguous(memory_format=output_memory_format(x)), *rest]


def inverted_residual(x, weights, stride, act, residual, se_act, se_gate):
    if (x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or x.numel() == 0
            or (x.stride(1) != 1 and x.shape[1] != 1)):
        return reference.inverted_residual(x, weights, stride, act, residual, se_act, se_gate)
    y = _ops(x).inverted_residual(x, list(weights), stride, act, residual, se_act, se_gate)
    return y.contiguous(memory_format=output_memory_format(x))


def inverted_residual_backward(grad, x, weights, stride, act, residual, se_act, se_gate):
    """The block's gradients from the building blocks' kernels, as reference's
    inverted_residual_backward composes them from stock ops: the forward recomputed stage by
    stage (expand, depthwise), then each stage's backward in reverse (project, squeeze-excite,
    depthwise, expand), all in float32 as reference computes (the kernels' float32
    instantiations), the gradients cast back by the op. The squeeze-excite's forward and
    backward are reference's stock ops: per-image vectors, and one element-wise pass over the
    hidden map each way."""
    w = weights
    if (x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or x.numel() == 0
            or (x.stride(1) != 1 and x.shape[1] != 1)):
        return reference.inverted_residual_backward(grad, x, weights, stride, act, residual,
                                                    se_act, se_gate)
    ops = _ops(x)
    w = BlockWeights(*(None if t is None else t.float() for t in w))
    x32 = x.float().contiguous(memory_format=torch.channels_last)
    g = grad.float().contiguous(memory_format=torch.channels_last)
    pad = same_padding(w.dw_w.shape[-1])
    expanded = (x32 if w.expand_w is None else
                ops.pwconv_bn_act(x32, w.expand_w, w.expand_scale, w.expand_shift, act, None))
    dw_out = ops.dwconv_bn_act(expanded, w.dw_w, w.dw_scale, w.dw_shift, stride, pad, 1, act)
    se = (w.se_w1, w.se_b1, w.se_w2, w.se_b2)
    se_out = (dw_out if w.se_w1 is None else reference.squeeze_excite(dw_out, *se, se_act, se_gate)
              .contiguous(memory_format=torch.channels_last))
    grads = {}
    g_h, *grads_project = ops.pwconv_bn_act_backward(g, se_out, w.project_w, w.project_scale,
                                                     w.project_shift, "none")
    grads.update(zip(("project_w", "project_scale", "project_shift"), grads_project))
    if w.se_w1 is not None:
        g_h, *grads_se = reference.squeeze_excite_backward(g_h, dw_out, *se, se_act, se_gate)
        g_h = g_h.contiguous(memory_format=torch.channels_last)
        grads.update(zip(("se_w1", "se_b1", "se_w2", "se_b2"), grads_se))
    g_h, *grads_dw = ops.dwconv_bn_act_backward(g_h, expanded, w.dw_w, w.dw_scale, w.dw_shift,
                                                stride, pad, 1, act)
    grads.update(zip(("dw_w", "dw_scale", "dw_shift"), grads_dw))
    if w.expand_w is not None:
        g_h, *grads_expand = ops.pwconv_bn_act_backward(g_h, x32, w.expand_w, w.expand_scale,
                                                        w.expand_shift, act)
        grads.update(zip(("expand_w", "expand_scale", "expand_shift"), grads_expand))
    grad_x = g_h + g if residual else g_h
    return (grad_x.to(x.dtype).contiguous(memory_format=output_memory_format(x)),
            BlockWeights(**{name: grads.get(name) for name in BlockWeights._fields}))
