"""Modelled DRAM traffic, FLOPs and H100 roofline time of MobileNet inference, layer by layer.

Nothing here is measured: no machine of this project has a GPU. Every figure this module
produces is a model of a GPU run and is to be shown labelled "modelled".

Where the layers come from
    The network is built on the meta device and run once, at the requested batch and resolution,
    under a TorchDispatchMode that records every aten op with its shapes and the module that called
    it (no memory is allocated and no arithmetic done). Editing a model definition changes the
    model here; an aten op this module has no cost for raises instead of being skipped silently.

The three executions compared (a "pass" is one kernel; it streams its operands from DRAM once)
    (a) eager   every aten op is a pass: conv, BatchNorm, activation, residual add, the pooling,
                FCs and gating of squeeze-excite (SE). An in-place op still reads and writes its
                whole tensor.   bytes = (inputs + parameters + output) * itemsize
    (b) folded  BatchNorm folded into its conv (a per-channel scale and shift, 2*C_out values), the
                activation and a residual add done in the conv's epilogue: one pass per conv or
                linear layer.   bytes = (input + residual + weight + 2*C_out + output) * itemsize
                Ops that are not the epilogue of a conv (SE pooling and gating, the global pool)
                stay passes of their own, as in (a).
    (c) fastdw  blocks with the math of the fastdw inverted_residual op (optional 1x1 expand with
                act, depthwise with act, optional SE, 1x1 project without act, optional residual)
                run fused, as issue 3 designs the kernels:
                  no SE:   one kernel; the expanded hidden tensor never reaches DRAM and the residual
                           comes from the x tile already loaded.
                           bytes = (x + all weights + y) * itemsize
                  with SE: the SE gate needs the mean of the whole depthwise output before any
                           project can start, so one tile-local kernel cannot finish the block. The
                           design (issue 3) splits it in three kernels:
                           1. expand + depthwise: reads x and their weights, writes hidden once and
                              the per-channel sums (fp32, N*C_hidden*4 bytes);
                           2. gate: reads the sums and the SE weights, writes N*C_hidden gates;
                           3. project: reads hidden once and the gates (applied in its prologue),
                              its weights and, for a residual, x again (another kernel); writes y.
                           Hidden thus makes one write and one read instead of eager's many. The
                           alternative, recomputing expand+depthwise once the gate is known, moves
                           no hidden bytes but reads x twice and doubles those FLOPs; it is not
                           modelled because it is not the kernel design.
                Every other layer (stem, last 1x1 conv, MobileNetV1's depthwise-separable pairs,
                whose pointwise conv has an activation the inverted_residual op does not have, the
                pool and the classifier) runs as in (b), through fastdw's per-layer ops.

"Minimum DRAM bytes": each pass reads each operand and writes its output exactly once. Halo
re-reads and weights re-read by many thread blocks are assumed to hit L2; a tensor written by one
kernel and read by the next is assumed NOT to still be in L2 (H100's L2 is 50 MB, so at small
batch the late 7x7 stages of (a) and (b) may in fact stay on chip: the model flatters fusion
there).

FLOPs (identical in a, b and c: fusion moves data, it does not change the arithmetic)
    conv    2 * N * C_out * H_out * W_out * (C_in / groups) * k_h * k_w  (+ N*C_out*H_out*W_out bias)
    linear  2 * M * N * K + M * N (bias)
    BatchNorm 2 per element (one FMA with a folded per-channel scale and shift)
    activations per element: relu 1, relu6 2 (max, min), hardsigmoid 4 (FMA, max, min),
    hardswish 5 (hardsigmoid then a multiply), silu 4; add and multiply 1; mean 1 per input element

Roofline time of one pass on an H100 SXM
    t = max(bytes / 3.35 TB/s,  tensor_flops / P_tensor + cuda_core_flops / P_cuda)
    P_tensor (dense convs and linears, groups == 1): 989 TFLOP/s for fp16/bf16 (dense tensor
    cores); 67 TFLOP/s for fp32 (FMA on CUDA cores: TF32 is not assumed).
    P_cuda (depthwise convs, BatchNorm, activations, adds, pooling): 67 TFLOP/s for every dtype,
    because fastdw accumulates fp16/bf16 in fp32, i.e. fp32 FMA on CUDA cores (the 134 TFLOP/s
    of packed fp16 FMA would need fp16 accumulation).
    Tensor-core and CUDA-core work are added, not overlapped, and launch latency is not modelled
    (it dominates at batch 1: read the kernel counts alongside the times).
"""
import functools
import re
from dataclasses import dataclass, field

import torch
from fastdw.torch_internals import TorchDispatchMode

MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
STRATEGIES = ("eager", "folded", "fastdw")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Gpu:
    name: str
    dram_bytes_per_s: float
    tensor_flops: dict      # dtype name -> FLOP/s of dense convs and linears
    cuda_core_flops: float  # FLOP/s of fp32 FMA on CUDA cores


H100_SXM = Gpu("H100 SXM", 3.35e12, {"fp16": 989e12, "bf16": 989e12, "fp32": 67e12}, 67e12)

# FLOPs per element of the elementwise aten ops (see the module docstring).
_ACT_FLOPS = {"relu": 1, "hardtanh": 2, "hardsigmoid": 4, "hardswish": 5, "silu": 4}
_KIND = {"convolution": "conv", "addmm": "linear", "native_batch_norm": "bn",
         "_native_batch_norm_legit_no_training": "bn", "add": "add", "mul": "mul", "mean": "mean",
         **{name: "act" for name in _ACT_FLOPS}}
# Ops that only relabel memory (no DRAM traffic): their output is the same data as their input.
_VIEWS = {"view", "_unsafe_view", "reshape", "t", "flatten", "squeeze", "unsqueeze", "detach",
          "alias"}
_FREE = {"empty"}  # BatchNorm's empty saved-statistics outputs
_SUM_BYTES = 4  # fastdw's SE kernels emit per-channel sums in fp32


@dataclass
class Op:
    """One recorded aten op. Tensors are value ids (a new id per write, in-place writes too)."""
    kind: str          # conv, linear, bn, act, add, mul, mean
    name: str          # aten name, e.g. "hardtanh" (relu6)
    module: str        # qualified name of the innermost module that ran it
    block: str         # the block it belongs to (see _block_of)
    reads: list        # activation value ids read
    params: int        # elements of weights / biases / BatchNorm statistics read
    out: int           # value id written
    flops: int
    tensor_core: bool  # dense conv or linear: runs on tensor cores
    conv: dict = field(default_factory=dict)  # convs: k, stride, groups, c_in, c_out, bias
    #                                             (elements); linears: c_in, c_out, bias


@dataclass
class Layer:
    """One pass of the folded execution (b): a conv or linear with the BatchNorm, activation and
    residual add that consume its output, or a lone op (SE pool, SE gating multiply, global pool)."""
    block: str
    ops: list
    role: str          # pw, dw, conv, fc, mean, mul, act, add (+act, +res suffixes)
    name: str
    desc: str
    inputs: list       # value ids read from outside the layer (the input, then any residual)
    out: int
    folded_params: int  # weights + (2*C_out scale/shift if BatchNorm else bias)

    @property
    def flops(self):
        return sum(op.flops for op in self.ops)


@dataclass
class Kernel:
    """One modelled pass: bytes per layer it serves (layer index -> bytes) and its FLOPs."""
    bytes_by_layer: dict
    tensor_flops: int
    cuda_flops: int

    @property
    def bytes(self):
        return sum(self.bytes_by_layer.values())

    def memory_time(self, gpu):
        return self.bytes / gpu.dram_bytes_per_s

    def time(self, gpu, dtype):
        compute = (self.tensor_flops / gpu.tensor_flops[dtype]
                   + self.cuda_flops / gpu.cuda_core_flops)
        return max(self.memory_time(gpu), compute)


@dataclass
class Trace:
    model: str
    batch: int
    resolution: int
    numel: dict        # value id -> elements
    shape: dict        # value id -> shape
    ops: list
    layers: list


def build_model(name):
    """The network definition the model reads, built on the meta device, running unfused.

    MobileNetV2/V3 come from torchvision: its forward is the stock conv -> BN -> act sequence, and
    fastdw.models reproduces its module tree. MobileNetV1 exists only in fastdw.models, whose
    ConvBNAct layers are nn.Sequential(Conv2d, BatchNorm2d, act) with a fused forward; on this
    private meta copy they run as the plain Sequential of their children, i.e. stock eager.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {MODELS}")
    if name == "mobilenet_v1":
        import fastdw.models
        builder = fastdw.models.mobilenet_v1
    else:
        import torchvision
        builder = getattr(torchvision.models, name)
    with torch.device("meta"):
        model = builder().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Sequential) \
                and type(module).forward is not torch.nn.Sequential.forward:
            module.forward = functools.partial(torch.nn.Sequential.forward, module)
    return model


def _block_of(stack):
    """The block an op belongs to: the outermost module under the root that is not a plain
    nn.Sequential container (features.3, classifier.1); "(forward)" for the root's own ops."""
    for name, module in stack[1:]:
        if type(module) is not torch.nn.Sequential:
            return name
    return "(forward)"


class _Recorder(TorchDispatchMode):
    def __init__(self, params, stack):
        super().__init__()
        self.params = params  # id(tensor) -> elements, for weights, biases, buffers
        self.stack = stack
        self.value = {}       # id(tensor) -> current value id
        self.numel, self.shape, self.ops = {}, {}, []
        self.keep = []        # keeps traced tensors alive so their id() is never reused

    def _new_value(self, t):
        vid = len(self.numel)
        self.value[id(t)] = vid
        self.numel[vid], self.shape[vid] = t.numel(), tuple(t.shape)
        self.keep.append(t)
        return vid

    def read(self, t):
        """(value id, None) for an activation, (None, elements) for a parameter."""
        if id(t) in self.params:
            return None, self.params[id(t)]
        if id(t) not in self.value:
            self._new_value(t)  # the network input
        return self.value[id(t)], None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        base = func.overloadpacket.__name__
        name = base.rstrip("_")
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if name in _FREE:
            return out
        if name in _VIEWS:
            src = tensors[0]
            if id(src) in self.params:
                self.params[id(out)] = self.params[id(src)]
            else:
                self.value[id(out)] = self.read(src)[0]
            self.keep.append(out)
            return out
        if name not in _KIND:
            raise NotImplementedError(
                f"perfmodel has no cost for aten.{base} (called from "
                f"{self.stack[-1][0] or 'the model'}); add it to fastdw/perfmodel.py")
        reads, params = [], 0
        for t in tensors:
            vid, elems = self.read(t)
            if vid is None:
                params += elems
            else:
                reads.append(vid)
        result = out[0] if isinstance(out, tuple) else out
        vid = self._new_value(result)
        flops, conv = self._flops(_KIND[name], name, args, tensors, result)
        dense = (_KIND[name] == "linear") or (_KIND[name] == "conv" and conv["groups"] == 1)
        module = self.stack[-1][0]
        self.ops.append(Op(_KIND[name], name, module, _block_of(self.stack), reads, params, vid,
                           flops, dense, conv))
        return out

    @staticmethod
    def _flops(kind, name, args, tensors, result):
        if kind == "conv":
            x, w, bias, groups = args[0], args[1], args[2], args[8]
            c_out = result.shape[1]
            flops = 2 * result.numel() * (x.shape[1] // groups) * w.shape[2] * w.shape[3]
            conv = {"k": w.shape[2], "stride": args[3][0], "groups": groups,
                    "c_in": x.shape[1], "c_out": c_out,
                    "bias": c_out if bias is not None else 0}
            return flops + (result.numel() if bias is not None else 0), conv
        if kind == "linear":  # addmm(bias, input, weight.t())
            m, k = args[1].shape
            n = args[2].shape[1]
            return 2 * m * k * n + result.numel(), {"c_in": k, "c_out": n, "bias": n}
        if kind == "mean":
            return tensors[0].numel(), {}
        per_element = {"bn": 2, "add": 1, "mul": 1}.get(kind) or _ACT_FLOPS[name]
        return per_element * result.numel(), {}


def trace(name, batch=32, resolution=224):
    """Record every aten op of model `name` on a (batch, 3, resolution, resolution) input."""
    return trace_module(build_model(name), name, batch, resolution)


def trace_module(model, name, batch, resolution, in_channels=3):
    """Record every aten op of a meta-device, eval-mode `model` on a (batch, in_channels,
    resolution, resolution) input."""
    params = {id(t): t.numel() for t in (*model.parameters(), *model.buffers())}
    stack = [("", model)]  # (qualified name, module) of the modules running right now

    def enter(qualname, module, args):
        stack.append((qualname, module))

    def leave(module, args, output):
        stack.pop()  # and return None: a forward hook's return value would replace the output

    hooks = []
    for qualname, module in model.named_modules():
        if module is not model:
            hooks.append(module.register_forward_pre_hook(functools.partial(enter, qualname)))
            hooks.append(module.register_forward_hook(leave))
    recorder = _Recorder(params, stack)
    x = torch.empty(batch, in_channels, resolution, resolution, device="meta")
    try:
        with torch.no_grad(), recorder:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    layers = _layers(recorder.ops, recorder.shape)
    return Trace(name, batch, resolution, recorder.numel, recorder.shape, recorder.ops, layers)


def _layers(ops, shape):
    """Group ops into the passes of execution (b). A BatchNorm, activation or add joins the layer
    whose output it reads when that output has no other reader (so fusing it hides nothing)."""
    readers = {}
    for op in ops:
        for vid in op.reads:
            readers[vid] = readers.get(vid, 0) + 1
    layers, owner = [], {}  # owner: value id -> the layer whose current output it is

    def fusable(op, v):
        # Value ids grow in creation order: an add's other operand must exist before the head
        # layer starts, or the head's epilogue could not read it.
        head = owner.get(v)
        return (head is not None and head.out == v and readers[v] == 1
                and head.role.split("+")[0] in _FUSES_EPILOGUE
                and not (op.kind == "bn" and "+" in head.role)
                and all(u < head.ops[0].out for u in op.reads if u != v))

    for op in ops:
        candidates = op.reads[:1] if op.kind in ("bn", "act") else op.reads
        head = next((owner[v] for v in candidates if fusable(op, v)), None)
        if op.kind in ("bn", "act", "add") and head is not None:
            head.ops.append(op)
            if op.kind == "bn":
                c = shape[op.out][1]
                head.folded_params += 2 * c - head.ops[0].conv["bias"]
            elif op.kind == "act":
                head.role += "+act"
                head.desc += f" +{op.name.replace('hardtanh', 'relu6')}"
            else:
                head.role += "+res"
                head.desc += " +residual"
                head.inputs += [v for v in op.reads if v != head.out]
            head.out = op.out
            owner[op.out] = head
            continue
        role, desc = _describe(op, shape)
        layer = Layer(op.block, [op], role, op.module, desc, list(op.reads), op.out, op.params)
        layers.append(layer)
        owner[op.out] = layer
    return layers


def _describe(op, shape):
    if op.kind == "conv":
        c = op.conv
        hw = "x".join(map(str, shape[op.out][2:]))
        k = f"{c['k']}x{c['k']}"
        if c["groups"] > 1 and c["groups"] == c["c_in"] == c["c_out"]:
            return "dw", f"dw{k} s{c['stride']} {c['c_in']} @{hw}"
        if c["k"] == 1 and c["groups"] == 1:
            role = "fc" if shape[op.out][2:] == (1, 1) else "pw"
            return role, f"{role}1x1 {c['c_in']}->{c['c_out']} @{hw}"
        return "conv", f"conv{k} s{c['stride']} {c['c_in']}->{c['c_out']} g{c['groups']} @{hw}"
    if op.kind == "linear":
        return "fc", f"linear {op.conv['c_in']}->{op.conv['c_out']}"
    # A lone op is described by the feature map it streams: mean's input, anything else's output.
    streamed = shape[op.reads[0]] if op.kind == "mean" else shape[op.out]
    return op.kind, f"{op.name} {'x'.join(map(str, streamed[1:]))}"


# Layer heads whose epilogue can take a following BatchNorm, activation or residual add.
_FUSES_EPILOGUE = ("pw", "dw", "conv", "fc")
# The layer roles of a block that is the fastdw inverted_residual op's math.
_INVERTED_RESIDUAL = re.compile(r"^(pw\+act )?dw\+act (mean fc\+act fc\+act mul )?pw(\+res)?$")


def _blocks(layers):
    """[(block, [layer indices])] in network order."""
    out = {}
    for i, layer in enumerate(layers):
        out.setdefault(layer.block, []).append(i)
    return list(out.items())


def _is_inverted_residual(layers, indices):
    return _INVERTED_RESIDUAL.match(" ".join(layers[i].role for i in indices)) is not None


def _fastdw_block(indices, layers, numel, itemsize):
    """Kernels of one fused inverted-residual block (see the module docstring), or None when the
    block is not one."""
    if not _is_inverted_residual(layers, indices):
        return None
    blk = [layers[i] for i in indices]
    first, project = indices[0], indices[-1]
    x = blk[0].inputs[0]

    def flops(idx, tensor):
        return sum(op.flops for i in idx for op in layers[i].ops if op.tensor_core == tensor)

    def kernel(idx, nbytes):
        return Kernel(nbytes, flops(idx, True), flops(idx, False))

    params = {i: layers[i].folded_params * itemsize for i in indices}
    y = numel[layers[project].out] * itemsize
    if len(blk) in (2, 3):  # no SE: one kernel, x in, weights, y out
        nbytes = dict(params)
        nbytes[first] += numel[x] * itemsize
        nbytes[project] += y
        return [kernel(indices, nbytes)]
    *head, mean, fc1, fc2, mul, _ = indices
    dw = head[-1]
    hidden = numel[layers[dw].out] * itemsize
    channels = numel[layers[mean].out]  # N * C_hidden
    expand_dw = {i: params[i] for i in head}
    expand_dw[first] += numel[x] * itemsize
    expand_dw[dw] += hidden
    expand_dw[mean] = channels * _SUM_BYTES
    gate = {fc1: channels * _SUM_BYTES + params[fc1],
            fc2: params[fc2] + channels * itemsize}
    residual = numel[x] * itemsize if layers[project].role.endswith("+res") else 0
    project_k = {mul: hidden + channels * itemsize, project: params[project] + residual + y}
    return [kernel([*head, mean], expand_dw), kernel([fc1, fc2], gate),
            kernel([mul, project], project_k)]


def kernels(tr, strategy, dtype):
    """[(block, [Kernel])] in network order for one strategy; bytes per layer index."""
    itemsize = torch.empty(0, dtype=DTYPES[dtype]).element_size()
    out = []
    for block, indices in _blocks(tr.layers):
        fused = (_fastdw_block(indices, tr.layers, tr.numel, itemsize)
                 if strategy == "fastdw" else None)
        if fused is not None:
            out.append((block, fused))
            continue
        ks = []
        for i in indices:
            layer = tr.layers[i]
            if strategy == "eager":
                for op in layer.ops:
                    elems = sum(tr.numel[v] for v in op.reads) + op.params + tr.numel[op.out]
                    tensor = op.flops if op.tensor_core else 0
                    ks.append(Kernel({i: elems * itemsize}, tensor, op.flops - tensor))
            else:
                elems = (sum(tr.numel[v] for v in layer.inputs) + layer.folded_params
                         + tr.numel[layer.out])
                tensor = sum(op.flops for op in layer.ops if op.tensor_core)
                ks.append(Kernel({i: elems * itemsize}, tensor, layer.flops - tensor))
        out.append((block, ks))
    return out


@dataclass
class Report:
    """Per layer and per block figures of one model for the three strategies (all modelled)."""
    trace: Trace
    dtype: str
    gpu: Gpu
    layer_bytes: dict   # strategy -> [bytes per layer]
    block_time: dict    # strategy -> {block: seconds}
    block_kernels: dict  # strategy -> {block: number of kernels}
    block_memory_time: dict  # strategy -> {block: seconds its kernels spend on DRAM traffic}

    def total_bytes(self, strategy):
        return sum(self.layer_bytes[strategy])

    def total_time(self, strategy):
        return sum(self.block_time[strategy].values())

    def total_kernels(self, strategy):
        return sum(self.block_kernels[strategy].values())

    @property
    def total_flops(self):
        return sum(layer.flops for layer in self.trace.layers)

    def blocks(self):
        """[(block, [layer indices])] in network order."""
        return _blocks(self.trace.layers)

    def compute_bound(self, strategy, block):
        """True when the block's modelled time exceeds its DRAM time (some kernel is FLOP-bound)."""
        return self.block_time[strategy][block] > 1.001 * self.block_memory_time[strategy][block]

    def fused_blocks(self):
        """Blocks fastdw runs as a fused inverted residual."""
        return [b for b, idx in self.blocks() if _is_inverted_residual(self.trace.layers, idx)]


def model(name, batch=32, resolution=224, dtype="fp16", gpu=H100_SXM):
    """The modelled report for one network; see the module docstring for every assumption."""
    return report(trace(name, batch, resolution), dtype, gpu)


def report(tr, dtype="fp16", gpu=H100_SXM):
    """The modelled report of a trace (see trace() and trace_module())."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    layer_bytes, block_time, block_kernels, block_memory_time = {}, {}, {}, {}
    for strategy in STRATEGIES:
        per_layer = [0] * len(tr.layers)
        times, counts, memory = {}, {}, {}
        for block, ks in kernels(tr, strategy, dtype):
            for k in ks:
                for i, b in k.bytes_by_layer.items():
                    per_layer[i] += b
            times[block] = sum(k.time(gpu, dtype) for k in ks)
            memory[block] = sum(k.memory_time(gpu) for k in ks)
            counts[block] = len(ks)
        layer_bytes[strategy], block_time[strategy] = per_layer, times
        block_kernels[strategy], block_memory_time[strategy] = counts, memory
    return Report(tr, dtype, gpu, layer_bytes, block_time, block_kernels, block_memory_time)
