"""What the CPU benchmarks time, shared by `python -m fastdw bench` and the scripts in bench/.

A *workload* is one thing to run: a depthwise conv -> BN -> act layer of a torchvision MobileNet
(op level) or a whole model (model level), with its stock eager module, an NCHW input and a way
to run it with fastdw. A *provider* is one way of running a workload (stock eager, channels_last,
torch.compile, fastdw on a backend, ONNX Runtime). Every provider returns the same tensor as the
stock eager module, so a speed figure can be checked against it (`max_abs_diff`).

BatchNorm statistics are calibrated on the workload's input and the BN affine is randomised:
freshly initialised BNs are identities (a wrong fold would go unnoticed) and let activations of a
random-weight MobileNet shrink to ~1e-9 at the logits (denormal territory, and no use for a
numerical check).
"""
import copy
import dataclasses
import functools
import io
from typing import Callable, Optional

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

DEFAULT_THREADS = 2
OP_MODELS = ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
MODELS = ("mobilenet_v1", *OP_MODELS)
IMAGE_SIZE = 224
# fastdw backends that exist but are not timed on CPU, with the reason shown to the user.
NOT_TIMED_ON_CPU = {
    "triton": "runs on CPU only under TRITON_INTERPRET=1, a numpy interpreter: far too slow",
    "cuda": "needs a CUDA GPU",
}


class Unavailable(Exception):
    """A provider cannot run this workload here; the message says why."""


def setup(threads: int) -> None:
    """Process-wide settings of every benchmark run: thread count and inductor freezing (read
    when torch.compile compiles; it lets inductor fold BN and use oneDNN's fused conv+act)."""
    import torch._inductor.config
    torch.set_num_threads(threads)
    torch._inductor.config.freezing = True


@dataclasses.dataclass
class Workload:
    name: str                  # pytest id and table row label, e.g. "b1-c32_112x112_k3_s1_relu6"
    group: str                 # pytest-benchmark group: the providers of one workload side by side
    x: torch.Tensor            # input, NCHW
    module: Optional[nn.Module]  # stock eager module (eval, NCHW); None: not available
    fastdw: Callable[[str], Callable[[torch.Tensor], torch.Tensor]]  # backend -> fn(x)
    about: dict                # what extra_info / the table says about the workload
    # model level: () -> fastdw.nn.freeze of the fastdw model; None: no frozen form (op level)
    frozen: Optional[Callable[[], Callable[[torch.Tensor], torch.Tensor]]] = None

    def stock_module(self) -> nn.Module:
        if self.module is None:
            stock_model(self.about["model"])  # raises Unavailable saying what is missing
        return self.module

    def oracle(self) -> torch.Tensor:
        """The output every provider is checked against: the stock eager module's, NCHW."""
        with torch.no_grad():
            return self.stock_module()(self.x)


def calibrate_bn(module: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Set every BN's running stats to the batch stats of `x` (activations stay O(1)) and draw a
    random BN affine; returns `module` in eval mode."""
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch sets the stats exactly
    module.train()
    with torch.no_grad():
        module(x)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in bns:
            bn.momentum = 0.1
            bn.weight.copy_(torch.empty_like(bn.weight).uniform_(0.5, 1.5, generator=gen))
            bn.bias.copy_(torch.empty_like(bn.bias).uniform_(-0.2, 0.2, generator=gen))
    return module.eval()


def _missing_fastdw(what: str, err: Exception) -> Unavailable:
    return Unavailable(f"{what} is not available ({type(err).__name__}: {err}; install fastdw "
                       "with pip install --no-build-isolation -e . from the repo root)")


# ---------------------------------------------------------------- op level: depthwise layers

@dataclasses.dataclass(frozen=True)
class DepthwiseLayer:
    channels: int
    height: int
    width: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    act: str
    users: tuple  # "model:module.path" of every layer with this shape
    module: Conv2dNormActivation  # the first of them, as torchvision builds it

    @property
    def name(self) -> str:
        return (f"c{self.channels}_{self.height}x{self.width}_k{self.kernel}_s{self.stride}"
                + (f"_d{self.dilation}" if self.dilation != 1 else "") + f"_{self.act}")


def _is_depthwise_block(module: nn.Module) -> bool:
    if not isinstance(module, Conv2dNormActivation):
        return False
    conv = module[0]
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


@functools.lru_cache(maxsize=None)
def depthwise_layers(models=OP_MODELS, size: int = IMAGE_SIZE) -> tuple:
    """The distinct depthwise conv+BN+act layers of torchvision's `models` at size x size, found
    by forward hooks (so the table follows the model definitions), in order of first use."""
    try:
        from fastdw.nn.layers import ACT_NAMES
    except ImportError as err:
        raise _missing_fastdw("fastdw.nn.layers (its activation names)", err) from err
    found = {}
    for model_name in models:
        model = getattr(torchvision.models, model_name)().eval()
        blocks = {path: block for path, block in model.named_modules()
                  if _is_depthwise_block(block)}
        input_sizes = {}  # block -> (H, W) of its input

        def record(block, inputs, output):
            input_sizes[block] = tuple(inputs[0].shape[2:])
        hooks = [block.register_forward_hook(record) for block in blocks.values()]
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
        for hook in hooks:
            hook.remove()
        for path, block in blocks.items():
            conv = block[0]
            act = ACT_NAMES[type(block[2])] if len(block) > 2 else "none"
            key = (conv.in_channels, *input_sizes[block], conv.kernel_size[0], conv.stride[0],
                   conv.padding[0], conv.dilation[0], act)
            user = f"{model_name}:{path}"
            if key in found:
                found[key] = dataclasses.replace(found[key], users=found[key].users + (user,))
            else:
                found[key] = DepthwiseLayer(*key, users=(user,), module=copy.deepcopy(block))
    return tuple(found.values())


def op_workload(layer: DepthwiseLayer, batch: int, seed: int = 0) -> Workload:
    torch.manual_seed(seed)
    x = torch.randn(batch, layer.channels, layer.height, layer.width)
    module = calibrate_bn(copy.deepcopy(layer.module), x, seed)

    def fastdw_fn(backend):
        try:
            from fastdw import ops
        except ImportError as err:
            raise _missing_fastdw("fastdw.ops", err) from err
        weight = module[0].weight.detach()
        scale, shift = (t.detach() for t in ops.fold_bn(module[1]))
        return functools.partial(ops.dwconv_bn_act, weight=weight, scale=scale, shift=shift,
                                 stride=layer.stride, padding=layer.padding,
                                 dilation=layer.dilation, act=layer.act, backend=backend)

    return Workload(
        name=f"b{batch}-{layer.name}",
        group=f"dwconv_bn_act b{batch} {layer.name}",
        x=x, module=module, fastdw=fastdw_fn,
        about=dict(op="dwconv_bn_act", batch=batch, shape=layer.name, used_by=list(layer.users)))


# ---------------------------------------------------------------- model level

def stock_model(model_name: str) -> nn.Module:
    """The stock PyTorch model: torchvision's, or for MobileNetV1 (torchvision has none)
    fastdw's module tree with each fused layer replaced by a plain nn.Sequential of its own
    conv, BN and activation modules (stock ops, same state_dict keys)."""
    builder = getattr(torchvision.models, model_name, None)
    if builder is not None:
        return builder()
    try:
        import fastdw.models
        import fastdw.nn
        model = getattr(fastdw.models, model_name)()
    except (ImportError, AttributeError) as err:
        raise _missing_fastdw(f"fastdw.models.{model_name}", err) from err
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, fastdw.nn.ConvBNAct):
                setattr(parent, child_name, nn.Sequential(*child))
    return model


def model_workload(model_name: str, batch: int, seed: int = 0) -> Workload:
    torch.manual_seed(seed)
    x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE)
    try:
        module = calibrate_bn(stock_model(model_name), x, seed)
    except Unavailable:
        module = None  # every provider reports why when it asks for the module

    def fastdw_model():
        try:
            import fastdw.models
            model = getattr(fastdw.models, model_name)()
        except (ImportError, AttributeError) as err:
            raise _missing_fastdw(f"fastdw.models.{model_name}", err) from err
        model.load_state_dict(workload.stock_module().state_dict(), strict=True)
        return model.eval()

    def fastdw_fn(backend):
        import fastdw
        model = fastdw_model().to(memory_format=torch.channels_last)

        def run(inp):
            with fastdw.use_backend(backend):
                return model(inp)
        return run

    def frozen_fn():
        import fastdw.nn
        return fastdw.nn.freeze(fastdw_model())

    workload = Workload(name=f"{model_name}-b{batch}", group=f"{model_name} b{batch}", x=x,
                        module=module, fastdw=fastdw_fn,
                        about=dict(model=model_name, batch=batch), frozen=frozen_fn)
    return workload


# ---------------------------------------------------------------- providers

@dataclasses.dataclass(frozen=True)
class Provider:
    name: str
    about: str                 # what runs, one line (saved in extra_info)
    make: Callable[[Workload], Callable[[torch.Tensor], torch.Tensor]]
    channels_last: bool        # whether make()'s function takes a channels_last input
    stock: bool                # a stock PyTorch path ("x best stock" compares against these)

    def build(self, workload: Workload):
        """(fn, x): the function to time and its input in this provider's layout. Warm it up
        (and compile it) with a few calls before timing. Raises Unavailable."""
        fn = self.make(workload)
        x = workload.x
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return fn, x


def _channels_last(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).to(memory_format=torch.channels_last)


def _compiled(workload: Workload):
    module = _channels_last(workload.stock_module())
    # Each workload compiles a new module whose forward is the same code object (e.g.
    # Sequential.forward); without a reset dynamo would soon hit its recompile limit.
    torch._dynamo.reset()
    return torch.compile(module, fullgraph=True, dynamic=False)


def _fastdw_backend(backend: str):
    def make(workload):
        try:
            import fastdw.backend
        except ImportError as err:
            raise _missing_fastdw("fastdw", err) from err
        row = fastdw.backend.info()[backend]
        if not row["usable"]:
            raise Unavailable(f"fastdw backend {backend!r} is not usable: {row['reason']}")
        if backend not in fastdw.backend.usable("cpu"):
            raise Unavailable(f"fastdw backend {backend!r} does not run on CPU")
        return workload.fastdw(backend)
    return make


def _fastdw_frozen(workload: Workload):
    if workload.frozen is None:
        raise Unavailable("fastdw.nn.freeze applies to whole models only")
    try:
        from fastdw.backend import BackendUnavailableError
    except ImportError as err:
        raise _missing_fastdw("fastdw.nn.freeze", err) from err
    try:
        return workload.frozen()
    except BackendUnavailableError as err:  # no fastdw._C
        raise Unavailable(str(err)) from err


def _onnx_bytes(workload: Workload) -> bytes:
    """The stock model exported as ONNX (TorchScript exporter, opset 17), as ORT and OpenVINO
    users would export it."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it to write the model)
    except ImportError as err:
        raise Unavailable("onnx is not installed (torch.onnx.export needs it: "
                          "pip install onnx)") from err
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(workload.stock_module(), (workload.x,), buf, dynamo=False,
                          opset_version=17)
    return buf.getvalue()


def _onnxruntime(workload: Workload, spinning: bool = True):
    try:
        import onnxruntime
    except ImportError as err:
        raise Unavailable("onnxruntime is not installed (the ort provider needs "
                          "pip install onnxruntime onnx)") from err
    model = _onnx_bytes(workload)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {input_name: x.numpy()})[0])


def _openvino(workload: Workload):
    try:
        import openvino
    except ImportError as err:
        raise Unavailable("openvino is not installed (the openvino provider needs "
                          "pip install openvino onnx)") from err
    core = openvino.Core()
    # Its defaults but the thread count, which every provider shares: the precision is the
    # CPU plugin's own choice (bf16 where the CPU has AMX, else f32).
    compiled = core.compile_model(core.read_model(model=_onnx_bytes(workload)), "CPU",
                                  {"INFERENCE_NUM_THREADS": torch.get_num_threads()})
    return lambda x: torch.from_numpy(compiled(x.numpy())[0])


def fastdw_backends() -> list:
    """fastdw backends timed on CPU: every backend fastdw knows of but NOT_TIMED_ON_CPU."""
    try:
        from fastdw.backend import BACKEND_MODULES
    except ImportError:
        return ["reference"]  # so the provider shows up, skipped with the import error
    return [name for name in BACKEND_MODULES if name not in NOT_TIMED_ON_CPU]


STOCK = [
    Provider("eager", "stock PyTorch eager, NCHW (conv -> BN -> act as separate ops)",
             lambda w: w.stock_module(), channels_last=False, stock=True),
    Provider("eager_cl", "stock PyTorch eager, module and input channels_last",
             lambda w: _channels_last(w.stock_module()), channels_last=True, stock=True),
    Provider("compile_cl", "torch.compile (inductor, freezing=True, fullgraph, static shapes), "
             "channels_last: BN folded, oneDNN conv with fused activation",
             _compiled, channels_last=True, stock=True),
]
FASTDW = [Provider(f"fastdw_{name}", f"fastdw, backend={name!r}, channels_last input",
                   _fastdw_backend(name), channels_last=True, stock=False)
          for name in fastdw_backends()]
FROZEN = Provider("fastdw_frozen", "fastdw.nn.freeze(model): the cpp kernels run back to back "
                  "in one C++ call (weights snapshotted), NCHW input", _fastdw_frozen,
                  channels_last=False, stock=False)
ORT = Provider("ort", "ONNX Runtime CPUExecutionProvider, its defaults (torch.onnx.export, "
               "opset 17; intra_op_num_threads = torch threads), NCHW", _onnxruntime,
               channels_last=False, stock=False)
# In a process shared with other providers ORT's pool, spinning after each run by default,
# holds the cores the next provider's OpenMP threads need and roughly doubles their times on
# 2 cores; there, and only there, its spinning is off (a setting a user would not choose).
ORT_SHARED = dataclasses.replace(
    ORT, about=ORT.about.replace("its defaults", "spinning off (shared process)"),
    make=functools.partial(_onnxruntime, spinning=False))
OPENVINO = Provider("openvino", "OpenVINO CPU plugin, its defaults (precision: the plugin's "
                    "choice; INFERENCE_NUM_THREADS = torch threads), the same ONNX export, NCHW",
                    _openvino, channels_last=False, stock=False)
OP_PROVIDERS = STOCK + FASTDW
MODEL_PROVIDERS = STOCK + FASTDW + [FROZEN, ORT, OPENVINO]


def sharing_a_process(providers: list) -> list:
    """`providers` to run side by side in one process: ORT with its spinning off."""
    return [ORT_SHARED if p is ORT else p for p in providers]


def max_abs_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out.float() - ref.float()).abs().max().item()


def check_close(out: torch.Tensor, ref: torch.Tensor, what: str) -> float:
    """Max abs difference of `out` from `ref`; raises beyond 1e-3 of the largest output, a
    bound for whole networks in fp32 (reordered sums compound over ~50 layers) that still
    catches a wrong fold or layer (a speed figure from a wrong result is worthless). The op
    tests hold each op to the much tighter bounds of tests/numerics.py."""
    diff = max_abs_diff(out, ref)
    bound = 1e-3 * ref.abs().max().item() + 1e-5
    if out.shape != ref.shape or not diff <= bound:
        raise AssertionError(f"{what}: output differs from stock eager by {diff:.3g} (allowed "
                             f"{bound:.3g}; shapes {tuple(out.shape)}, {tuple(ref.shape)})")
    return diff
