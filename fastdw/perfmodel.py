"""Modelled DRAM traffic, FLOPs and H100 roofline time of MobileNet inference, layer by layer.

Nothing here is measured: no machine of this project has a GPU. Every figure this module
produces is a model of a GPU run and is to be shown labelled "modelled".

Where the layers come from
    The network is built on the meta device and run once, at the requested batch and resolution,
    under a TorchDispatchMode that records every aten op with its shapes and the module that called
    it (no memory is allocated and no arithmetic done). Editing a model definition changes the
    model here; an aten op this module has no cost for raises instead of being skipped silently.

The five executions compared (a "pass" is one kernel; it streams its operands from DRAM once)
    (a) eager   every aten op is a pass: conv, BatchNorm, activation, residual add, the pooling,
                FCs and gating of squeeze-excite (SE). An in-place op still reads and writes its
                whole tensor.   bytes = (inputs + parameters + output) * itemsize
    (b) folded  BatchNorm folded into its conv (a per-channel scale and shift, 2*C_out values), the
                activation and a residual add done in the conv's epilogue: one pass per conv or
                linear layer.   bytes = (input + residual + weight + 2*C_out + output) * itemsize
                Ops that are not the epilogue of a conv (SE pooling and gating, the global pool)
                stay passes of their own, as in (a).
    (c) design  blocks with the math of the fastdw inverted_residual op (optional 1x1 expand with
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
                (c) is the ideal design, kept as the yardstick; (d) and (e) are what runs.
    (d) triton  fastdw's committed Triton kernels (fastdw/kernels/triton), as their launchers
                choose on this GPU for channels_last inputs (fastdw's modules compute
                channels_last on CUDA: the first of them, the stem, copies the NCHW input once,
                a pass of its own). The tile configs, the fused-vs-split choice (by the SM
                count), the scratch region, the register cap and the images per launch are the
                kernel modules' own (pick_config, runs_fused, scratch_row, scratch_region,
                maxnreg, resident_programs, launch_plan: imported, so the model follows the
                code; triton_ir_plan, checked against the launcher by tests/test_perfmodel.py).
                inverted_residual, fused (one program per image and 8x8 output tile): DRAM as
                in (c). Each program expands its x window (tile + halo, so neighbouring tiles
                recompute the halo's expansion) once for every hidden channel, in the
                launcher's expand steps (whole BLOCK_P steps, then a power-of-two tail: the
                padding is expand work too), into its scratch region (steps x C_hidden rounded
                to BLOCK_HID, x's dtype); its first BLOCK_CIN input channels are read once per
                program, channels past BLOCK_CIN once per hidden chunk. The k*k taps read the
                region back chunk by chunk; the tl.dot tiles are padded (C_in to BLOCK_CIN,
                C_out to BLOCK_COUT, tile pixels past the map edge). Scratch and re-reads are
                L2 traffic. Launches: launch_plan's. With no more tiles than the programs
                the GPU surely runs at once (SMs x blocks per SM by the register cap), a
                program per tile in one launch. With more, the launcher compiles both
                variants and goes persistent (one launch of the programs the GPU runs at
                once, each looping over every P-th tile and reusing its scratch region) where
                the looped variant neither spills nor runs fewer programs at once; else plain
                waves of whole images (those SCRATCH_BUDGET allows, at least the resident
                programs' worth). The model cannot compile: triton_persistent_pays is its
                rule, from sm_90 compiles of both variants (fp32 and the fused blocks with
                channels not multiples of 16 at k <= 5 go persistent, and the aligned fp16/bf16
                fused blocks with BLOCK_CIN and BLOCK_COUT <= 32; the other aligned fp16/bf16
                fused blocks, which spill at the 128-register cap, every fp16/bf16 split block,
                which loses a block per SM, and k7 with channels not multiples of 16 fall back
                to waves). The scratch of one round of tiles (a wave, or the persistent
                programs' regions) beyond the GPU's L2 (l2_size) is charged to DRAM once per
                round, as dirty lines evicted before the next round reuses them (none on an
                H100 for MobileNetV2 in fp16 or fp32).
                inverted_residual, split (SE, C_out > MAX_FUSED_COUT, or fewer fused programs
                than SMs): the same expand + depthwise kernel, one program per tile and chunk,
                reading x's window per chunk, writes the hidden tensor (x's dtype, each pixel's
                channels padded with zeros to whole BLOCK_HID chunks) and for SE fp32 per-tile
                sums to DRAM; the SE gate runs as torch ops on fp32 vectors (a pass each, weight
                casts included); where C_hidden is not a whole number of chunks F.pad copies the
                project weight (and the gate) to the padded width, a pass each; pwconv_bn_act's GEMM kernel reads the padded
                hidden (gate in its prologue), adds x, writes y.
                dwconv_bn_act and pwconv_bn_act layers: their tile kernels (DRAM as (b), padded
                tiles, each program loading its window / its rows per column tile; channels_last,
                so pw's per-image NCHW grid does not apply). Depthwise weights are copied
                tap-major by the launchers on every call (a launch each).
                The stem conv (F.conv2d with the BN folded into weight and bias, then its
                activation module), the pool and the classifier (nn.Linear, then its activation
                module) are stock torch ops on a GPU: a pass each.
                Vector widths (VEC) and other instruction choices move the same bytes: the model
                does not see them. TRITON_CHANGES lists the issue-13 changes the model can switch
                off (`off`), to show what each is modelled to save.
    (e) cuda    fastdw's committed CUDA kernels (csrc/cuda; tile sizes CUDA_* below, checked
                against the headers by tests/test_perfmodel.py): dwconv_bn_act one thread per
                output pixel and 16-byte channel pack reading its taps from global memory,
                pwconv_bn_act 64x64 tiles (mma.sync for fp16/bf16 rows of whole 16-byte packs,
                fp32 FMA otherwise, K padded to the chunk), both after the host's per-call fp32
                tap-major copy of the depthwise weights. inverted_residual: one kernel per 8x8
                output tile and 64 output channels (so a wider block re-expands each tile per
                64 outputs), x's window staged through shared memory once per hidden chunk of
                32, the hidden window in shared memory (no DRAM or L2 traffic); with SE two
                kernels: the first writes d (x's dtype) and fp32 per-tile sums, the second
                recomputes the image's gate in every block and projects the gated d. Where the
                backend has no block kernel (cuda_has_block_kernel, CUDA_BLOCK_SE_KERNEL), the
                block is fastdw.kernels.reference.inverted_residual traced on meta tensors op by
                op (x cast to fp32, each conv, scale, shift, act a pass in fp32, the result cast
                back). Stem (with its channels_last copy), pool and classifier as in (d). Inputs
                are channels_last, so the NCHW depthwise kernel does not run here; the backward
                kernels are outside this model (inference only).

"Minimum DRAM bytes": each pass reads each operand and writes its output exactly once. Halo
re-reads and weights re-read by many thread blocks are assumed to hit L2; a tensor written by one
kernel and read by the next is assumed NOT to still be in L2 (H100's L2 is 50 MB, so at small
batch the late 7x7 stages of (a) and (b) may in fact stay on chip: the model flatters fusion
there). Folded BN scales and shifts are fp32 at fastdw's kernels (d, e), x's dtype in (a)-(c).

L2 bytes (d, e): what a kernel's global loads and stores move between L2 and the SMs, counted as
the footprint of each program (thread block): L1 catches re-reads within one program, nothing is
shared between programs, shared memory and registers are free. For (a)-(c) L2 bytes = DRAM bytes.

FLOPs (identical in a, b and c: fusion moves data, it does not change the arithmetic; (d) and
(e) count what their kernels execute: padded tiles, the halo's expansion per tile)
    conv    2 * N * C_out * H_out * W_out * (C_in / groups) * k_h * k_w  (+ N*C_out*H_out*W_out bias)
    linear  2 * M * N * K + M * N (bias)
    BatchNorm 2 per element (one FMA with a folded per-channel scale and shift)
    activations per element: relu 1, relu6 2 (max, min), hardsigmoid 4 (FMA, max, min),
    hardswish 5 (hardsigmoid then a multiply), silu 4; add and multiply 1; mean 1 per input element

Roofline time of one pass on an H100 SXM
    t = max(bytes / 3.35 TB/s,  L2 bytes / 5.5 TB/s,  tensor_flops / P_tensor + cuda_core_flops / P_cuda)
    The L2 bandwidth is an assumption (no GPU here measured it); it only bounds (d) and (e).
    P_tensor (dense convs and linears, groups == 1): 989 TFLOP/s for fp16/bf16 (dense tensor
    cores); 67 TFLOP/s for fp32 (FMA on CUDA cores: TF32 is not assumed).
    P_cuda (depthwise convs, BatchNorm, activations, adds, pooling): 67 TFLOP/s for every dtype,
    because fastdw accumulates fp16/bf16 in fp32, i.e. fp32 FMA on CUDA cores (the 134 TFLOP/s
    of packed fp16 FMA would need fp16 accumulation).
    Tensor-core and CUDA-core work are added, not overlapped, and launch latency is not modelled
    (it dominates at batch 1: read the kernel counts alongside the times). The reference path of
    (e) computes fp16/bf16 blocks in fp32: its dense work runs at the fp32 rate.
"""
import functools
import importlib
import re
from dataclasses import dataclass, field

import torch
from fastdw.torch_internals import TorchDispatchMode

MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
STRATEGIES = ("eager", "folded", "design", "triton", "cuda")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Gpu:
    name: str
    dram_bytes_per_s: float
    tensor_flops: dict      # dtype name -> FLOP/s of dense convs and linears
    cuda_core_flops: float  # FLOP/s of fp32 FMA on CUDA cores
    l2_bytes_per_s: float   # assumed bandwidth of L2 to the SMs (see the module docstring)
    sms: int                # streaming multiprocessors (the triton launcher weighs its grid)
    shared_per_block: int   # opt-in dynamic shared memory of one block, bytes
    l2_size: int            # bytes of L2 (what the triton scratch of one wave may stay in)


H100_SXM = Gpu("H100 SXM", 3.35e12, {"fp16": 989e12, "bf16": 989e12, "fp32": 67e12}, 67e12,
               5.5e12, 132, 227 * 1024, 50 << 20)

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
    """One modelled pass: DRAM bytes per layer it serves (layer index -> bytes), its FLOPs,
    and for the committed kernels (d, e) the bytes its global loads and stores move through L2
    (None: only its DRAM bytes), the launches it takes and the dtype its dense work runs in
    (None: the model's dtype)."""
    bytes_by_layer: dict
    tensor_flops: int
    cuda_flops: int
    l2_bytes: int = None
    launches: int = 1
    dtype: str = None

    @property
    def bytes(self):
        return sum(self.bytes_by_layer.values())

    @property
    def l2(self):
        return self.bytes if self.l2_bytes is None else max(self.l2_bytes, self.bytes)

    def memory_time(self, gpu):
        return max(self.bytes / gpu.dram_bytes_per_s, self.l2 / gpu.l2_bytes_per_s)

    def time(self, gpu, dtype):
        compute = (self.tensor_flops / gpu.tensor_flops[self.dtype or dtype]
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
    """Kernels of one inverted-residual block in the fused design (c) (see the module
    docstring), or None when the block is not one."""
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


def kernels(tr, strategy, dtype, gpu=None, off=()):
    """[(block, [Kernel])] in network order for one strategy; bytes per layer index. `gpu`
    (default H100_SXM) matters to the committed triton kernels, whose launcher weighs its grid
    against the GPU's SMs. `off`: TRITON_CHANGES the model switches off in (d) (and
    "channels_last" in (e))."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    off = _check_off(off)
    gpu = gpu or H100_SXM
    itemsize = torch.empty(0, dtype=DTYPES[dtype]).element_size()
    out = []
    for block, indices in _blocks(tr.layers):
        if strategy in ("triton", "cuda"):
            ks = _committed(tr, indices, strategy, dtype, gpu, off)
            if not out and "channels_last" not in off:
                ks = [_to_channels_last(tr, indices[0], itemsize)] + ks
            out.append((block, ks))
            continue
        fused = (_fastdw_block(indices, tr.layers, tr.numel, itemsize)
                 if strategy == "design" else None)
        if fused is not None:
            out.append((block, fused))
            continue
        ks = []
        for i in indices:
            if strategy == "eager":
                ks += _eager(tr, i, itemsize)
            else:
                ks.append(_folded(tr, i, itemsize))
        out.append((block, ks))
    return out


def _eager(tr, i, itemsize):
    """Layer i's ops, each a pass of its own."""
    ks = []
    for op in tr.layers[i].ops:
        elems = sum(tr.numel[v] for v in op.reads) + op.params + tr.numel[op.out]
        tensor = op.flops if op.tensor_core else 0
        ks.append(Kernel({i: elems * itemsize}, tensor, op.flops - tensor))
    return ks


def _folded(tr, i, itemsize):
    """Layer i as one pass, BN folded and its act and residual in the epilogue."""
    layer = tr.layers[i]
    elems = sum(tr.numel[v] for v in layer.inputs) + layer.folded_params + tr.numel[layer.out]
    tensor = sum(op.flops for op in layer.ops if op.tensor_core)
    return Kernel({i: elems * itemsize}, tensor, layer.flops - tensor)


# ---------------------------------------------------------------------------------------------
# (d) triton and (e) cuda: fastdw's committed kernels, as their launchers run them on a GPU.

PARAM_BYTES = 4    # folded BN scales and shifts reach every fastdw kernel in fp32 (fold_bn)
# aten name of a traced activation -> the act name of fastdw's ops (fastdw.contract.ACTIVATIONS)
_ACT_NAMES = {"hardtanh": "relu6", "relu": "relu", "hardswish": "hardswish",
              "hardsigmoid": "hardsigmoid", "silu": "silu"}
# csrc/cuda tile constants (a test reads them from the headers and fails when they differ):
# pwconv_bn_act.cuh: kMmaTile (= kFfmaTile) pixels x output channels per block, and the K chunk
# of the tensor-core (kMmaK) and fp32 FMA (kFfmaK) kernels; dwconv_bn_act.cuh: a thread owns one
# 16-byte pack of channels, a block 256 threads with at most 16 channel groups.
CUDA_PW_TILE, CUDA_PW_MMA_K, CUDA_PW_FFMA_K = 64, 32, 16
CUDA_PACK_BYTES, CUDA_DW_THREADS, CUDA_DW_MAX_GROUPS = 16, 256, 16
# inverted_residual.cuh: a block owns a kIrTile x kIrTile output tile and kIrCout output
# channels, walks the hidden channels in chunks of kIrChunk (C_in too), rows of kIrRow elements.
CUDA_IR_TILE, CUDA_IR_CHUNK, CUDA_IR_COUT, CUDA_IR_ROW, CUDA_IR_THREADS = 8, 32, 64, 40, 128
# Whether fastdw/kernels/cuda.py sends blocks with squeeze-excite to its kernels (else to
# reference); a test calls the backend and fails when this differs.
CUDA_BLOCK_SE_KERNEL = True


def _cdiv(a, b):
    return -(-a // b)


def _round_up(a, b):
    return _cdiv(a, b) * b


@dataclass(frozen=True)
class IRShape:
    """One inverted-residual block as its op sees it, read from the block's traced layers."""
    n: int
    c_in: int
    h: int
    w: int
    hidden: int
    k: int
    stride: int
    oh: int
    ow: int
    c_out: int
    act: str            # fastdw act name of expand and depthwise
    residual: bool
    squeeze: int        # SE inner channels, 0 without SE
    se_act: str
    se_gate: str
    stages: dict        # stage (expand, dw, project, mean, fc1, fc2, mul) -> layer index

    @property
    def expand(self):
        return "expand" in self.stages


def ir_shape(tr, indices):
    """The IRShape of a fused block's layers (see _is_inverted_residual)."""
    layers = [tr.layers[i] for i in indices]
    stages = {}
    if layers[0].role.startswith("pw"):
        stages["expand"] = indices[0]
    stages["dw"] = indices[len(stages)]
    stages["project"] = indices[-1]
    squeeze = 0
    if len(indices) - len(stages) == 4:
        stages.update(zip(("mean", "fc1", "fc2", "mul"), indices[-5:-1]))
        squeeze = tr.layers[stages["fc1"]].ops[0].conv["c_out"]

    def act_of(i, default):
        return next((op.name for op in tr.layers[i].ops if op.kind == "act"), default)

    n, c_in, h, w = tr.shape[layers[0].inputs[0]]
    dw = tr.layers[stages["dw"]]
    _, hidden, oh, ow = tr.shape[dw.out]
    return IRShape(n, c_in, h, w, hidden, dw.ops[0].conv["k"], dw.ops[0].conv["stride"], oh, ow,
                   tr.layers[stages["project"]].ops[0].conv["c_out"],
                   _ACT_NAMES[act_of(stages["dw"], None)],
                   tr.layers[stages["project"]].role.endswith("+res"), squeeze,
                   _ACT_NAMES.get(act_of(stages.get("fc1", stages["dw"]), None), "relu"),
                   _ACT_NAMES[act_of(stages["fc2"], None)] if squeeze else "hardsigmoid",
                   stages)


def _window_pixels(size, out, block, stride, k):
    """Input pixels inside the image, summed over the tiles of one image axis, of the windows
    ((block - 1) * stride + k pixels from tile * block * stride - (k - 1) // 2) that output tiles
    of `block` pixels read along an axis of `size` input / `out` output pixels."""
    span, total = (block - 1) * stride + k, 0
    for t in range(_cdiv(out, block)):
        start = t * block * stride - (k - 1) // 2
        total += max(0, min(start + span, size) - max(start, 0))
    return total


def _triton_module(op):
    """The module of triton kernel `op` (by path: the package rebinds these names to the
    backend's functions). Imported on first use: tracing needs no Triton."""
    return importlib.import_module(f"fastdw.kernels.triton.{op}")


# The issue-13 changes of the triton kernels the model can switch off (the `off` argument of
# model(), report(), kernels() and triton_ir_plan()), each back to what ran before it; what the
# committed kernels do with each one on.
TRITON_CHANGES = {
    "x_once": "the fused kernel expands its window for every hidden chunk into one scratch "
              "region and reads its x window once (off: a region per chunk, x per chunk)",
    "sm_split": "blocks whose fused grid has fewer programs than SMs split "
                "(off: fused whenever no SE and C_out <= MAX_FUSED_COUT)",
    "scratch_dtype": "the expand scratch in x's dtype (off: fp32)",
    "trimmed_window": "the expand steps end in a power-of-two tail (expand_steps; off: whole "
                      "BLOCK_P steps)",
    "padded_hidden": "the split path's hidden tensor, project weight and gate padded to whole "
                     "BLOCK_HID channels, copied by F.pad where C_hidden is not (off: C_hidden, "
                     "no copies)",
    "resident_waves": "a plain launch holds at least the GPU's resident programs (off: waves "
                      "of only what SCRATCH_BUDGET allows, and no persistent launch)",
    "persistent": "one persistent launch where launch_plan finds the looped variant as "
                  "resident as the plain one (triton_persistent_pays; off: plain waves of "
                  "whole images, at least the resident programs each, and the SE sums per "
                  "wave copied into the pooled vector)",
    "channels_last": "fastdw's modules compute channels_last on CUDA: one NCHW -> NHWC copy of "
                     "the input at the stem (off: no copy)",
}


def _check_off(off):
    off = frozenset(off)
    unknown = off - set(TRITON_CHANGES)
    if unknown:
        raise ValueError(f"off: unknown change(s) {sorted(unknown)}; choose from "
                         f"{tuple(TRITON_CHANGES)}")
    return off


def _channels_last_strides(n, c, h, w):
    return (c * h * w, 1, w * c, c)


def triton_persistent_pays(fused, itemsize, regs, k, block_cin, block_cout):
    """Whether inverted_residual.launch_plan, where it weighs the block kernel's persistent
    variant on an H100 (sm_90), finds that it neither spills nor runs fewer programs at once
    than the plain one: the model's stand-in for the GPU's compile, which it cannot run. The
    rule is what sm_90 compiles of both variants gave (the rows "... persistent" of `python -m
    fastdw.kernels.triton.resources` and their plain twins, and MobileNetV2's blocks, since
    394802d keeps the loop's index ranges in the loop):
    - fp32 (cap 255): both variants at one block per SM (204-234 registers), no spill: pays;
    - fp16/bf16 split: the plain kernel fits 3-4 blocks per SM (60-80 registers), the
      persistent one 2 (86-124): does not pay;
    - fp16/bf16 fused, channels not multiples of 16 (cap 255): V2's 24-channel k3 blocks stay
      at one block per SM (130-162 -> 168 registers): pays; the k7 C=120 block drops from 2 to
      1 (122 -> 182): k <= 5 only;
    - fp16/bf16 fused, aligned (cap 128): both at two blocks per SM, no spill (V2's 32- and
      96-channel k3 blocks, the k5 s2 and k7 s1 rows): pays; except BLOCK_CIN 64 with
      BLOCK_COUT 64 (V2's 64 -> 384 -> 64 block), whose persistent variant spills 8 B.
    Known optimistic: a fused block whose plain kernel fits three blocks per SM (BLOCK_COUT 16
    at k5 s2: 74 registers) loses one (96). Configurations none of these compiles covers follow
    the nearest rule."""
    if itemsize == 4:
        return True
    if not fused:
        return False
    if regs == _triton_module("_shared").MAXNREG_UNALIGNED:
        return k <= 5
    return (block_cin, block_cout) != (64, 64)

def triton_residency(gpu, regs, warps, pays):
    """launch_plan's `residency(persistent)` as the model gives it: (programs the GPU runs at
    once, spilled bytes). Plain: the register cap's programs (resident_programs: a kernel below
    its cap may fit more; split fp16/bf16 kernels do on sm_90, so the model's waves of those are
    smaller than the GPU's). Persistent: the same where triton_persistent_pays, else a one-byte
    spill, which stands for "spills or runs fewer programs" (the model does not know which)."""
    resident = _triton_module("_shared").resident_programs(gpu.sms, regs, warps)
    return lambda persistent: (resident, 0 if pays or not persistent else 1)


def _budget_waves(n, per_image, region_bytes):
    """Images per launch of the plain kernel before launches held the resident programs
    (2700808): as many as SCRATCH_BUDGET allows, at least one."""
    wave = _triton_module("inverted_residual").SCRATCH_BUDGET // max(1, per_image * region_bytes)
    return max(1, min(n, wave))


def triton_ir_plan(b, itemsize, gpu, off=()):
    """What fastdw/kernels/triton/inverted_residual.forward launches for block b (channels_last
    x, as fastdw's modules give it on CUDA) on `gpu`: a dict of fused (bool), the tile config,
    tiles per image, hidden chunks, the scratch row (columns per window pixel) and region
    (elements per program), its element size, the hidden tensor's padded row (hid_row), the
    register cap (regs), the programs the GPU holds at once by it (resident), whether the
    launch is persistent, images per launch (wave), programs per launch along grid axis 0,
    launches, the grid of a full launch, and the scratch bytes L2 does not keep (spill). The
    launch comes from the launcher's own launch_plan, with triton_residency standing in for the
    compiled kernels. `off`: TRITON_CHANGES switched off (the model's ablation, not the
    launcher)."""
    off = _check_off(off)
    ir = _triton_module("inverted_residual")
    shared = _triton_module("_shared")
    tile = ir.pick_config(b.c_in, b.hidden, b.c_out, b.oh, b.ow, False, itemsize, True)[:2]
    tiles_hw = _cdiv(b.oh, tile[0]) * _cdiv(b.ow, tile[1])
    fused = ir.runs_fused(b.squeeze > 0, b.c_out, b.n * tiles_hw,
                          None if "sm_split" in off else gpu.sms)
    config = ir.pick_config(b.c_in, b.hidden, b.c_out, b.oh, b.ow, fused, itemsize, True)
    boh, bow, bcin, bhid, bcout, warps = config
    chunks = _cdiv(b.hidden, bhid)
    grid_chunks = 1 if fused else chunks
    row = ir.scratch_row(b.hidden, bhid, fused and "x_once" not in off)
    if "trimmed_window" in off:
        halo = ir.halo_pixels(b.k, b.stride, boh, bow)
        region = _round_up(halo, boh * bow) * row
    else:
        region = ir.scratch_region(b.k, b.stride, boh, bow, row)
    region = region if b.expand else 0
    scratch_size = 4 if "scratch_dtype" in off else itemsize
    hid_row = b.hidden if "padded_hidden" in off else ir.scratch_row(b.hidden, bhid, True)
    x_strides = _channels_last_strides(b.n, b.c_in, b.h, b.w)
    y_strides = (_channels_last_strides(b.n, b.c_out, b.oh, b.ow) if fused
                 else (b.oh * b.ow * hid_row, b.ow * hid_row, hid_row, 1))
    regs = shared.maxnreg(itemsize, b.c_in, b.hidden, b.c_out, *x_strides, *y_strides)
    resident = shared.resident_programs(gpu.sms, regs, warps)
    per_image = tiles_hw * grid_chunks
    region_bytes = region * scratch_size
    before = "persistent" in off or "resident_waves" in off
    if "resident_waves" in off:  # plain waves within the scratch budget alone
        persistent, wave = False, _budget_waves(b.n, per_image, region_bytes)
        programs = wave * tiles_hw
    else:  # "persistent" off: launch_plan told the looped variant never pays (its waves)
        pays = "persistent" not in off and triton_persistent_pays(fused, itemsize, regs, b.k,
                                                                  bcin, bcout)
        persistent, wave, programs = ir.launch_plan(
            b.n, tiles_hw, grid_chunks, region_bytes, gpu.sms, regs, warps,
            residency=triton_residency(gpu, regs, warps, pays))
    launches = _cdiv(b.n, wave)
    # Scratch beyond L2 is evicted (dirty) before the next round of tiles overwrites it:
    # written to DRAM once per round (a wave, or the persistent programs' next tiles). The
    # programs' live regions are assumed to stay for their read-back, and L2's other contents
    # (x, weights) are not counted against it.
    spill = 0
    for n0 in range(0, b.n, wave):
        tiles = min(wave, b.n - n0) * tiles_hw
        for t0 in range(0, tiles, programs):
            spill += max(0, min(programs, tiles - t0) * grid_chunks * region_bytes - gpu.l2_size)
    return dict(fused=fused, config=config, tiles_hw=tiles_hw, chunks=chunks, row=row,
                region=region, scratch_size=scratch_size, hid_row=hid_row, regs=regs,
                resident=resident, persistent=persistent, wave=wave, programs=programs,
                launches=launches, grid=(min(programs, wave * tiles_hw), grid_chunks),
                spill=spill, sums_per_wave=before)


def _triton_ir(b, itemsize, gpu, off=()):
    """Kernels of block b on the triton backend (see the module docstring, (d))."""
    plan = triton_ir_plan(b, itemsize, gpu, off)
    boh, bow, bcin, bhid, bcout, _ = plan["config"]
    st, s, ss = b.stages, itemsize, plan["scratch_size"]
    bp, chunks = boh * bow, plan["chunks"]
    programs = b.n * plan["tiles_hw"]
    work = programs * chunks               # (program, hidden chunk) pairs, fused or split
    window = b.n * (_window_pixels(b.h, b.oh, boh, b.stride, b.k)
                    * _window_pixels(b.w, b.ow, bow, b.stride, b.k))
    act = _act_flops(b.act)
    x, y = b.n * b.c_in * b.h * b.w * s, b.n * b.c_out * b.oh * b.ow * s
    we = (b.c_in * b.hidden * s + 2 * b.hidden * PARAM_BYTES) if b.expand else 0
    wd = b.k * b.k * b.hidden * s + 2 * b.hidden * PARAM_BYTES
    wp = b.hidden * b.c_out * s + 2 * b.c_out * PARAM_BYTES
    first = st.get("expand", st["dw"])
    if b.expand:  # the window expanded in the expand steps into the scratch, read back by taps
        rows = work * (plan["region"] // plan["row"]) * bhid  # scratch elements written
        e_tensor = rows * _round_up(b.c_in, bcin) * 2
        e_cuda = rows * (2 + act)
        halo = (boh - 1) * b.stride + b.k
        halo *= (bow - 1) * b.stride + b.k
        # x's window: split programs (one chunk each) and fused programs with one region per
        # chunk read it per chunk; a fused program's resident first BLOCK_CIN channels once.
        reads = (b.c_in * chunks if not plan["fused"] or plan["row"] == bhid
                 else min(b.c_in, bcin) + max(0, b.c_in - bcin) * chunks)
        l2 = window * reads * s + programs * we + (rows + work * halo * bhid) * ss
    else:         # the taps read x's window directly
        e_tensor = e_cuda = 0
        l2 = window * b.hidden * s
    d_cuda = work * bp * bhid * (2 * b.k * b.k + 2 + act)
    l2 += programs * wd
    taps = _triton_taps(b.hidden, b.k, s, st["dw"])
    if plan["fused"]:
        p_tensor = work * bp * bhid * bcout * 2
        end = programs * bp * bcout * (2 + b.residual)
        l2 += programs * wp + (b.n * b.c_out * b.oh * b.ow * s if b.residual else 0) + y
        dram = {first: x + we + plan["spill"], st["dw"]: wd, st["project"]: wp + y}
        if first == st["dw"]:
            dram[first] = x + wd
        return [taps, Kernel(dram, e_tensor + p_tensor, e_cuda + d_cuda + end, l2,
                             plan["launches"])]
    hid_row = plan["hid_row"]
    hidden = b.n * b.oh * b.ow * hid_row * s
    pool = b.n * plan["tiles_hw"] * b.hidden * _SUM_BYTES if b.squeeze else 0
    dram = {first: x + we + plan["spill"], st["dw"]: wd + hidden}
    if first == st["dw"]:
        dram[first] = x + wd + hidden
    if pool:
        dram[st["mean"]] = pool
    ks = [taps, Kernel(dram, e_tensor, e_cuda + d_cuda, l2 + hidden + pool, plan["launches"])]
    if b.squeeze:
        ks += _se_gate_passes(b, itemsize, plan)
    if hid_row != b.hidden:  # F.pad copies the weight (and the gate) where there is padding
        ks.append(Kernel({st["project"]: b.c_out * (b.hidden + hid_row) * s}, 0, 0))
        if b.squeeze:
            ks.append(Kernel({st["mul"]: b.n * (b.hidden + hid_row) * _SUM_BYTES}, 0, 0))
    ks.append(_triton_pw(b.n, b.oh * b.ow, hid_row, b.c_out, itemsize, "none", b.residual,
                         gate=b.squeeze > 0, layer=st["project"],
                         gate_layer=st.get("mul")))
    return ks


def _triton_taps(c, k, itemsize, layer):
    """The launchers' per-call tap-major copy of depthwise weights (_shared.tap_major: (C, K*K)
    transposed to (K*K, C) in the weight's dtype): one launch."""
    return Kernel({layer: 2 * c * k * k * itemsize}, 0, 0)


def _act_flops(name):
    """FLOPs per element of fastdw act `name` ("none" 0; the sigmoid gate, which these
    networks do not use, costed like silu)."""
    aten = {act: aten for aten, act in _ACT_NAMES.items()}.get(name, "silu")
    return 0 if name == "none" else _ACT_FLOPS[aten]


def _se_gate_passes(b, itemsize, plan):
    """The split block's squeeze-excite between its two kernels, as torch ops on fp32 vectors
    (inverted_residual.forward): the per-tile sums of every launch summed per image once (before
    4b70f8b, plan["sums_per_wave"]: per launch, and copied into the pooled vector), then the
    division by the pixels, fc1 (weights cast to fp32), se_act, fc2, se_gate; each op a pass
    of its own."""
    st, f = b.stages, _SUM_BYTES
    per_image = plan["tiles_hw"] * b.hidden
    sums = plan["launches"] if plan["sums_per_wave"] else 1
    ks = [Kernel({st["mean"]: (b.n * per_image + b.n * b.hidden) * f}, 0, b.n * per_image,
                 launches=sums)]
    if plan["sums_per_wave"]:
        ks.append(Kernel({st["mean"]: 2 * b.n * b.hidden * f}, 0, 0, launches=sums))
    ks.append(Kernel({st["mean"]: 2 * b.n * b.hidden * f}, 0, b.n * b.hidden))
    for fc, c_in, c_out, act in (("fc1", b.hidden, b.squeeze, b.se_act),
                                 ("fc2", b.squeeze, b.hidden, b.se_gate)):
        params = c_in * c_out + c_out
        if itemsize != f:  # .float() of the weight and the bias
            ks.append(Kernel({st[fc]: params * (itemsize + f)}, 0, 0, launches=2))
        ks.append(Kernel({st[fc]: (b.n * c_in + params + b.n * c_out) * f},
                         2 * b.n * c_in * c_out, b.n * c_out, dtype="fp32"))
        ks.append(Kernel({st[fc]: 2 * b.n * c_out * f}, 0,
                         b.n * c_out * _act_flops(act)))
    return ks


def _triton_pw(n, pixels, c_in, c_out, itemsize, act, residual, layer, gate=False,
               gate_layer=None):
    """pwconv_bn_act's GEMM kernel (fastdw/kernels/triton/pwconv_bn_act.py) on m = n * pixels
    rows: each program loads its BLOCK_M rows of x (once per BLOCK_N column tile) and BLOCK_N
    rows of the weight (once per row tile); tl.dot on whole padded tiles."""
    pw = _triton_module("pwconv_bn_act")
    m, s = n * pixels, itemsize
    bm, bn, bk, _ = pw.pick_config(m, c_in, c_out, True)
    gx, gy = _cdiv(m, bm), _cdiv(c_out, bn)
    tensor = 2 * gx * bm * gy * bn * _round_up(c_in, bk)
    cuda = m * c_out * (2 + _act_flops(act) + residual) + (m * c_in if gate else 0)
    out = m * c_out * s * (1 + residual)
    l2 = gy * m * c_in * s + gx * c_out * c_in * s + out + (gx * gy * c_in * _SUM_BYTES if gate
                                                             else 0)
    dram = {layer: c_out * c_in * s + 2 * c_out * PARAM_BYTES + out}
    if gate_layer is not None:
        dram[gate_layer] = m * c_in * s + n * c_in * _SUM_BYTES
    else:
        dram[layer] += m * c_in * s + (n * c_in * _SUM_BYTES if gate else 0)
    return Kernel(dram, tensor, cuda, l2)


def _triton_dw(n, c, h, w, oh, ow, k, stride, itemsize, act, layer, gpu):
    """dwconv_bn_act's tile kernel (fastdw/kernels/triton/dwconv_bn_act.py): a program loads
    the window of its BLOCK_OH x BLOCK_OW tile for BLOCK_C channels (the launcher's tile on
    `gpu`: smaller on maps whose 8x8 tiles leave SMs idle)."""
    dw = _triton_module("dwconv_bn_act")
    boh, bow, bc, _ = dw.pick_config(c, itemsize, oh, ow, True, n, gpu.sms)
    programs = n * _cdiv(oh, boh) * _cdiv(ow, bow) * _cdiv(c, bc)
    window = n * _window_pixels(h, oh, boh, stride, k) * _window_pixels(w, ow, bow, stride, k)
    params = k * k * c * itemsize + 2 * c * PARAM_BYTES
    x, y = n * c * h * w * itemsize, n * c * oh * ow * itemsize
    cuda = programs * boh * bow * bc * (2 * k * k + 2 + _act_flops(act))
    l2 = window * c * itemsize + programs * (k * k + 2) * bc * itemsize + y
    return [_triton_taps(c, k, itemsize, layer), Kernel({layer: x + params + y}, 0, cuda, l2)]


def _cuda_pw(n, pixels, c_in, c_out, itemsize, act, residual, layer):
    """csrc/cuda/pwconv_bn_act.cuh: CUDA_PW_TILE x CUDA_PW_TILE tiles of y; tensor cores (mma)
    for fp16/bf16 rows of whole 16-byte packs, else fp32 FMA on CUDA cores."""
    m, s, tile = n * pixels, itemsize, CUDA_PW_TILE
    mma = itemsize == 2 and (c_in * itemsize) % CUDA_PACK_BYTES == 0
    gx, gy = _cdiv(m, tile), _cdiv(c_out, tile)
    gemm = 2 * gx * tile * gy * tile * _round_up(c_in, CUDA_PW_MMA_K if mma else CUDA_PW_FFMA_K)
    cuda = m * c_out * (2 + _act_flops(act) + residual)
    out = m * c_out * s * (1 + residual)
    l2 = gy * m * c_in * s + gx * c_out * c_in * s + out
    dram = m * c_in * s + c_out * c_in * s + 2 * c_out * PARAM_BYTES + out
    return Kernel({layer: dram}, gemm if mma else 0, cuda + (0 if mma else gemm), l2)


def _cuda_taps(c, k, itemsize, layer):
    """The host's per-call fp32 tap-major copy of depthwise weights (csrc/cuda/host_ops.h:
    weight.to(float), then the transposed copy): one launch for fp32 weights, two otherwise."""
    elems = c * k * k
    if itemsize == PARAM_BYTES:
        return Kernel({layer: 2 * elems * PARAM_BYTES}, 0, 0)
    return Kernel({layer: elems * (itemsize + 3 * PARAM_BYTES)}, 0, 0, launches=2)


def _cuda_dw(n, c, h, w, oh, ow, k, stride, itemsize, act, layer):
    """csrc/cuda/dwconv_bn_act.cuh: one thread per output pixel and 16-byte channel pack, a
    block a strip of consecutive pixels by up to CUDA_DW_MAX_GROUPS packs; each thread reads its
    k x k taps straight from global memory (a block's footprint: k rows of its strip's window),
    and the fp32 tap-major weights the host prepares per call (_cuda_taps)."""
    v = CUDA_PACK_BYTES // itemsize
    groups = _cdiv(c, v)
    bx = 1
    while bx < CUDA_DW_MAX_GROUPS and bx < groups:
        bx *= 2
    by = CUDA_DW_THREADS // bx
    pixels = n * oh * ow
    blocks = _cdiv(pixels, by) * _cdiv(groups, bx)
    channels = min(c, bx * v)
    strip = k * min(w, (by - 1) * stride + k) * channels * itemsize
    x, y = n * c * h * w * itemsize, pixels * c * itemsize
    params = (k * k + 2) * c * PARAM_BYTES
    cuda = pixels * groups * v * (2 * k * k + 2 + _act_flops(act))
    l2 = blocks * (strip + (k * k + 2) * channels * PARAM_BYTES) + y
    return [_cuda_taps(c, k, itemsize, layer), Kernel({layer: x + params + y}, 0, cuda, l2)]


def cuda_has_block_kernel():
    """Whether the cuda backend has an inverted_residual kernel (fastdw/kernels/cuda.py): the
    model follows the code, blocks without one run the reference composite."""
    return hasattr(importlib.import_module("fastdw.kernels.cuda"), "inverted_residual")


def cuda_ir_shared_bytes(b, itemsize, se=False):
    """Dynamic shared memory of one block of csrc/cuda/inverted_residual.cuh (its ir_shared):
    x and expand-weight staging (with an expand), the fp32 hidden window, the depthwise output
    and the project weights (with SE the threads' fp32 partial sums instead), each rounded to
    16 bytes."""
    halo = ((CUDA_IR_TILE - 1) * b.stride + b.k) ** 2
    rows = CUDA_IR_ROW * itemsize
    parts = ([CUDA_IR_TILE ** 2 * rows, CUDA_IR_CHUNK * rows] if b.expand else []) + [
        halo * CUDA_IR_CHUNK * 4, CUDA_IR_TILE ** 2 * rows,
        CUDA_IR_THREADS * 4 if se else CUDA_IR_COUT * rows]
    return sum(_round_up(p, 16) for p in parts)


def _cuda_ir(b, itemsize, dtype, gpu):
    """Kernels of block b on the cuda backend (see the module docstring, (e))."""
    se = b.squeeze > 0
    if not cuda_has_block_kernel() or (se and not CUDA_BLOCK_SE_KERNEL):
        return _reference_ir(b, dtype)
    st, s = b.stages, itemsize
    if cuda_ir_shared_bytes(b, itemsize, se) > gpu.shared_per_block:  # the building blocks
        if se:
            raise NotImplementedError("perfmodel does not model a squeeze-excite block whose "
                                      "window exceeds the GPU's shared memory")
        hw = b.h * b.w
        ks = [_cuda_pw(b.n, hw, b.c_in, b.hidden, s, b.act, False, st["expand"])] \
            if b.expand else []
        ks += _cuda_dw(b.n, b.hidden, b.h, b.w, b.oh, b.ow, b.k, b.stride, s, b.act, st["dw"])
        ks.append(_cuda_pw(b.n, b.oh * b.ow, b.hidden, b.c_out, s, "none", b.residual,
                           st["project"]))
        return ks
    tile, chunk, cout = CUDA_IR_TILE, CUDA_IR_CHUNK, CUDA_IR_COUT
    bp = tile * tile
    tiles = _cdiv(b.oh, tile) * _cdiv(b.ow, tile)
    columns = 1 if se else _cdiv(b.c_out, cout)  # blocks per tile, each re-expanding it
    blocks = b.n * tiles * columns
    chunks = _cdiv(b.hidden, chunk)
    work = blocks * chunks
    halo = ((tile - 1) * b.stride + b.k) ** 2
    window = b.n * columns * (_window_pixels(b.h, b.oh, tile, b.stride, b.k)
                              * _window_pixels(b.w, b.ow, tile, b.stride, b.k))
    mma = itemsize == 2
    act = _act_flops(b.act)
    x, y = b.n * b.c_in * b.h * b.w * s, b.n * b.c_out * b.oh * b.ow * s
    we = (b.c_in * b.hidden * s + 2 * b.hidden * PARAM_BYTES) if b.expand else 0
    wd = (b.k * b.k + 2) * b.hidden * PARAM_BYTES  # fp32 taps (_cuda_taps), scale, shift
    wp = b.hidden * b.c_out * s + 2 * b.c_out * PARAM_BYTES
    gemm, cuda = 0, work * bp * chunk * (2 * b.k * b.k + 2 + act)  # depthwise
    if b.expand:  # per chunk: the window in 64-pixel steps, C_in in chunks, staged in shared
        gemm += work * _round_up(halo, bp) * chunk * _round_up(b.c_in, chunk) * 2
        cuda += work * halo * chunk * (2 + act)
        l2 = window * b.c_in * s * chunks + blocks * we
    else:
        l2 = window * b.hidden * s
    l2 += blocks * wd
    first = st.get("expand", st["dw"])
    dram = {first: x + we, st["dw"]: wd} if b.expand else {first: x + wd}

    def kernel(dram, gemm, cuda, l2):
        return Kernel(dram, gemm if mma else 0, cuda + (0 if mma else gemm), l2)

    taps = _cuda_taps(b.hidden, b.k, s, st["dw"])
    per_cout = min(b.c_out, cout)  # a block's column slice of the project weights
    if not se:  # project each chunk into the accumulators, then the epilogue
        gemm += work * bp * chunk * cout * 2
        cuda += blocks * bp * cout * (2 + b.residual)
        l2 += blocks * b.hidden * per_cout * s + y * (1 + b.residual)
        dram[st["project"]] = wp + y
        return [taps, kernel(dram, gemm, cuda, l2)]
    # SE: the first kernel writes d and per-tile fp32 sums of d; the host casts the SE weights
    # to fp32 (a launch each unless they are fp32); se_gate_project recomputes the image's gate
    # in every block (pools the sums, fc1, se_act, fc2, se_gate) and projects the gated d of 64
    # pixels x 64 output channels.
    d = b.n * b.oh * b.ow * b.hidden * s
    sums = b.n * tiles * b.hidden * _SUM_BYTES
    dram[st["dw"]] = dram.get(st["dw"], 0) + d
    dram[st["mean"]] = sums
    ks = [taps, kernel(dram, gemm, cuda, l2 + d + sums)]
    fc_elems = {"fc1": b.squeeze * (b.hidden + 1), "fc2": b.hidden * (b.squeeze + 1)}
    if s != PARAM_BYTES:
        ks += [Kernel({st[fc]: e * (s + PARAM_BYTES)}, 0, 0, launches=2)
               for fc, e in fc_elems.items()]
    rows = _cdiv(b.oh * b.ow, bp)
    blocks2 = b.n * rows * _cdiv(b.c_out, cout)
    fcs = sum(fc_elems.values()) * PARAM_BYTES
    gate_cuda = blocks2 * (tiles * b.hidden + 2 * (2 * b.squeeze * b.hidden)
                           + b.squeeze * (1 + _act_flops(b.se_act))
                           + b.hidden * (1 + _act_flops(b.se_gate)))
    gemm2 = blocks2 * bp * _round_up(b.hidden, chunk) * cout * 2
    cuda2 = gate_cuda + blocks2 * bp * b.hidden + blocks2 * bp * cout * (2 + b.residual)
    l2_2 = (blocks2 * (tiles * b.hidden * _SUM_BYTES + fcs + b.hidden * per_cout * s)
            + _cdiv(b.c_out, cout) * d + y * (1 + b.residual))
    dram2 = {st["mean"]: sums, st["fc1"]: fc_elems["fc1"] * PARAM_BYTES,
             st["fc2"]: fc_elems["fc2"] * PARAM_BYTES, st["mul"]: d,
             st["project"]: wp + y + (x if b.residual else 0)}
    return ks + [kernel(dram2, gemm2, cuda2, l2_2)]


class _PassRecorder(TorchDispatchMode):
    """Every aten op a function dispatches on meta tensors, as a pass: (aten name, bytes read,
    bytes written, FLOPs, dense). Ops returning a view of an input move nothing."""

    def __init__(self):
        super().__init__()
        self.passes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        alias = returns[0].alias_info if returns else None
        name = func.overloadpacket.__name__.rstrip("_")
        if (alias is not None and not alias.is_write) or name.startswith("empty"):
            return out
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        result = out[0] if isinstance(out, tuple) else out
        read = sum(t.numel() * t.element_size() for t in tensors)
        flops, dense = 0, False
        if name in _KIND:
            flops, conv = _Recorder._flops(_KIND[name], name, args, tensors, result)
            dense = _KIND[name] == "linear" or (_KIND[name] == "conv" and conv["groups"] == 1)
        self.passes.append((name, read, result.numel() * result.element_size(), flops, dense))
        return out


def _reference_ir(b, dtype):
    """Block b through fastdw.kernels.reference.inverted_residual (what a backend without an
    inverted_residual kernel runs), traced on meta tensors: one Kernel per aten op, its dense
    work at the reference's compute dtype. Bytes go to the stage each op serves."""
    from fastdw.contract import BlockWeights, compute_dtype
    from fastdw.kernels import reference
    t = DTYPES[dtype]

    def meta(*shape, fp32=False):
        return torch.empty(shape, dtype=torch.float32 if fp32 else t, device="meta")

    e = b.expand
    se = b.squeeze > 0
    weights = BlockWeights(
        meta(b.hidden, b.c_in) if e else None, meta(b.hidden, fp32=True) if e else None,
        meta(b.hidden, fp32=True) if e else None, meta(b.hidden, 1, b.k, b.k),
        meta(b.hidden, fp32=True), meta(b.hidden, fp32=True), meta(b.c_out, b.hidden),
        meta(b.c_out, fp32=True), meta(b.c_out, fp32=True),
        *((meta(b.squeeze, b.hidden), meta(b.squeeze), meta(b.hidden, b.squeeze),
           meta(b.hidden)) if se else (None,) * 4))
    # NCHW: a meta convolution drops channels_last (cuDNN keeps it, so a GPU run has no final
    # layout copy); no pass moves other bytes in one layout than in the other.
    x = meta(b.n, b.c_in, b.h, b.w)
    recorder = _PassRecorder()
    with torch.no_grad(), recorder:
        reference.inverted_residual(x, weights, b.stride, b.act, b.residual, b.se_act,
                                    b.se_gate)
    st = b.stages
    convs = [st[k] for k in ("expand", "dw", "project") if k in st]
    fcs = [st[k] for k in ("fc1", "fc2") if k in st]
    compute = next(k for k, v in DTYPES.items() if v == compute_dtype(t))
    ks, layer, gated = [], convs[0], False
    for name, read, write, flops, dense in recorder.passes:
        if name == "convolution":
            layer = convs.pop(0)
        elif name in ("addmm", "linear"):
            layer = fcs.pop(0)
            gated = not fcs
        elif name == "mean":
            layer = st["mean"]
        elif name == "mul" and gated:
            layer, gated = st["mul"], False
        ks.append(Kernel({layer: read + write}, flops if dense else 0, 0 if dense else flops,
                         dtype=compute))
    return ks


def _stock(tr, i, itemsize):
    """A layer fastdw runs with stock torch ops on a GPU (see the module docstring, (d)/(e)):
    the stem conv with its folded bias, then its in-place activation; a Linear (addmm with its
    bias), then its activation module; a lone op as one pass."""
    layer = tr.layers[i]
    head = _folded(tr, i, itemsize)
    if not layer.role.endswith("+act") or layer.role.split("+")[0] not in ("conv", "fc"):
        return [head]
    act = next(op for op in layer.ops if op.kind == "act")
    head.cuda_flops -= act.flops
    out = tr.numel[layer.out] * itemsize
    return [head, Kernel({i: 2 * out}, 0, act.flops)]


def _to_channels_last(tr, layer, itemsize):
    """The first fused module's x.contiguous(memory_format=torch.channels_last) of the network's
    NCHW input (fastdw.nn.layers.feature_layout, on CUDA): one copy pass."""
    return Kernel({layer: 2 * tr.numel[tr.layers[layer].inputs[0]] * itemsize}, 0, 0)


def _committed(tr, indices, backend, dtype, gpu, off=()):
    """Kernels of one block on fastdw's `backend` ("triton" or "cuda") as committed."""
    itemsize = torch.empty(0, dtype=DTYPES[dtype]).element_size()
    if _is_inverted_residual(tr.layers, indices):
        b = ir_shape(tr, indices)
        return (_triton_ir(b, itemsize, gpu, off) if backend == "triton"
                else _cuda_ir(b, itemsize, dtype, gpu))
    ks = []
    for i in indices:
        layer = tr.layers[i]
        conv = layer.ops[0].conv
        base = layer.role.split("+")[0]
        act = next((_ACT_NAMES[op.name] for op in layer.ops if op.kind == "act"), "none")
        is_conv = layer.ops[0].kind == "conv"
        if is_conv and base in ("pw", "fc") and conv["k"] == 1 and conv["groups"] == 1:
            n, c_out, oh, ow = tr.shape[layer.out]
            run = _triton_pw if backend == "triton" else _cuda_pw
            ks.append(run(n, oh * ow, conv["c_in"], c_out, itemsize, act,
                          layer.role.endswith("+res"), layer=i))
        elif is_conv and base == "dw":
            n, c, h, w = tr.shape[layer.inputs[0]]
            _, _, oh, ow = tr.shape[layer.out]
            args = (n, c, h, w, oh, ow, conv["k"], conv["stride"], itemsize, act, i)
            ks += _triton_dw(*args, gpu) if backend == "triton" else _cuda_dw(*args)
        else:
            ks += _stock(tr, i, itemsize)
    return ks


@dataclass
class Report:
    """Per layer and per block figures of one model for the three strategies (all modelled)."""
    trace: Trace
    dtype: str
    gpu: Gpu
    layer_bytes: dict   # strategy -> [bytes per layer]
    block_time: dict    # strategy -> {block: seconds}
    block_kernels: dict  # strategy -> {block: number of kernels}
    block_memory_time: dict  # strategy -> {block: seconds its kernels spend on memory traffic}
    block_l2: dict      # strategy -> {block: bytes its kernels' loads and stores move via L2}
    block_flops: dict   # strategy -> {block: FLOPs its kernels execute, padding included}

    def total_bytes(self, strategy):
        return sum(self.layer_bytes[strategy])

    def total_time(self, strategy):
        return sum(self.block_time[strategy].values())

    def total_kernels(self, strategy):
        return sum(self.block_kernels[strategy].values())

    def total_l2(self, strategy):
        return sum(self.block_l2[strategy].values())

    def total_executed_flops(self, strategy):
        return sum(self.block_flops[strategy].values())

    @property
    def total_flops(self):
        return sum(layer.flops for layer in self.trace.layers)

    def blocks(self):
        """[(block, [layer indices])] in network order."""
        return _blocks(self.trace.layers)

    def compute_bound(self, strategy, block):
        """True when the block's modelled time exceeds its memory time (some kernel is
        FLOP-bound)."""
        return self.block_time[strategy][block] > 1.001 * self.block_memory_time[strategy][block]

    def bound(self, strategy, block):
        """What limits the block's kernels: "FLOPs", "L2" or "DRAM" (the larger of its DRAM and
        L2 time)."""
        if self.compute_bound(strategy, block):
            return "FLOPs"
        gpu = self.gpu
        dram = sum(self.layer_bytes[strategy][i] for i in dict(self.blocks())[block])
        return "L2" if self.block_l2[strategy][block] / gpu.l2_bytes_per_s > \
            dram / gpu.dram_bytes_per_s else "DRAM"

    def fused_blocks(self):
        """Blocks that are one inverted_residual op (fused in (c); (d) and (e) as committed)."""
        return [b for b, idx in self.blocks() if _is_inverted_residual(self.trace.layers, idx)]


def model(name, batch=32, resolution=224, dtype="fp16", gpu=H100_SXM, off=()):
    """The modelled report for one network; see the module docstring for every assumption.
    `off`: TRITON_CHANGES switched off (see kernels())."""
    return report(trace(name, batch, resolution), dtype, gpu, off)


def report(tr, dtype="fp16", gpu=H100_SXM, off=()):
    """The modelled report of a trace (see trace() and trace_module())."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    layer_bytes, block_time, block_kernels, block_memory_time = {}, {}, {}, {}
    block_l2, block_flops = {}, {}
    for strategy in STRATEGIES:
        per_layer = [0] * len(tr.layers)
        times, counts, memory, l2, flops = {}, {}, {}, {}, {}
        for block, ks in kernels(tr, strategy, dtype, gpu, off):
            for k in ks:
                for i, b in k.bytes_by_layer.items():
                    per_layer[i] += b
            times[block] = sum(k.time(gpu, dtype) for k in ks)
            memory[block] = sum(k.memory_time(gpu) for k in ks)
            counts[block] = sum(k.launches for k in ks)
            l2[block] = sum(k.l2 for k in ks)
            flops[block] = sum(k.tensor_flops + k.cuda_flops for k in ks)
        layer_bytes[strategy], block_time[strategy] = per_layer, times
        block_kernels[strategy], block_memory_time[strategy] = counts, memory
        block_l2[strategy], block_flops[strategy] = l2, flops
    return Report(tr, dtype, gpu, layer_bytes, block_time, block_kernels, block_memory_time,
                  block_l2, block_flops)
