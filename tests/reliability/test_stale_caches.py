"""No cached value goes stale: after every kind of edit users make to weights once a first call
has cached something (the C++ kernels' packed weights, a fused module's folded BatchNorm, the
models' eval program, a torch.compile graph), the next call computes with the new values. The
edits include those that move no version counter: `.data`, memory shared through numpy, and
optimizers with fused=True. Each result is compared with stock PyTorch in float64 on the values
the weights hold at that moment."""
import collections
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastdw
from fastdw import backend
from numerics import REL_TOL, assert_close, rel_err


def _in_place(p):
    p.mul_(-2)


def _through_data(p):
    p.data.mul_(-2)  # .data has a version counter of its own


def _through_numpy(p):
    shared = p.detach().numpy()
    shared *= -2


def _fused_adam(p):
    p.grad = torch.randn_like(p)
    torch.optim.Adam([p], lr=0.5, fused=True).step()


def _fused_sgd(p):
    p.grad = torch.randn_like(p)
    torch.optim.SGD([p], lr=0.05, fused=True).step()


EDITS = [_in_place, _through_data, _through_numpy, _fused_adam, _fused_sgd]


def edit_ids(edit):
    return edit.__name__.lstrip("_")


def test_fused_optimizers_move_no_version_counter():
    # Why this suite edits through them: if torch ever bumps the counter, the cases above stay
    # meaningful, but this premise of the design (fastdw/nn/cache.py) is worth knowing about.
    p = nn.Parameter(torch.randn(4))
    before = p._version
    _fused_adam(p)
    assert p._version == before


def pw_case():
    x = torch.randn(2, 24, 5, 6)
    w, scale, shift = torch.randn(40, 24) / 5, torch.rand(40) + 0.5, torch.randn(40)

    def op(x, w, scale, shift):
        return fastdw.ops.pwconv_bn_act(x, w, scale, shift, act="hardswish")

    def ref(x, w, scale, shift):
        y = F.conv2d(x.double(), w.double()[:, :, None, None])
        return F.hardswish(y * scale.double()[:, None, None] + shift.double()[:, None, None])
    return op, ref, x, [w, scale, shift]


def dw_case():
    x = torch.randn(2, 16, 9, 9)
    w, scale, shift = torch.randn(16, 1, 3, 3), torch.rand(16) + 0.5, torch.randn(16)

    def op(x, w, scale, shift):
        return fastdw.ops.dwconv_bn_act(x, w, scale, shift, stride=2, act="relu")

    def ref(x, w, scale, shift):
        y = F.conv2d(x.double(), w.double(), stride=2, padding=1, groups=16)
        return F.relu(y * scale.double()[:, None, None] + shift.double()[:, None, None])
    return op, ref, x, [w, scale, shift]


CASES = {"pwconv_bn_act": pw_case, "dwconv_bn_act": dw_case}


@pytest.mark.parametrize("edit", EDITS, ids=edit_ids)
@pytest.mark.parametrize("case", CASES)
def test_ops_see_every_edit(case, edit, backend_name):
    op, ref, x, tensors = CASES[case]()
    weights = [nn.Parameter(t) for t in tensors]
    with backend.use_backend(backend_name), torch.no_grad():
        for _ in range(2):  # the second call finds whatever the first cached
            assert_close(op(x, *weights), ref(x, *weights), torch.float32)
        for w in weights:
            edit(w)
        assert_close(op(x, *weights), ref(x, *weights), torch.float32)


@pytest.mark.parametrize("case", CASES)
def test_compiled_ops_see_in_place_edits(case, backend_name):
    # Inductor hands the kernel an alias of the weight whose version counter never moves.
    op, ref, x, tensors = CASES[case]()
    compiled = torch.compile(op, fullgraph=True)
    with backend.use_backend(backend_name), torch.no_grad():
        for _ in range(2):
            assert_close(compiled(x, *tensors), ref(x, *tensors), torch.float32)
        for t in tensors:
            t.copy_(torch.randn_like(t))
        assert_close(compiled(x, *tensors), ref(x, *tensors), torch.float32)


def small_v2_block():
    return fastdw.nn.InvertedResidual(16, 16, 1, 6)


def small_v3_block():
    return fastdw.nn.InvertedResidualV3(16, 3, 48, 24, 1, act="hardswish", squeeze_channels=16)


LAYERS = {
    "pointwise": lambda: fastdw.nn.ConvBNAct(16, 24, 1, act="relu6"),
    "depthwise": lambda: fastdw.nn.DWConvBNAct(16, act="hardswish"),
    "stem": lambda: fastdw.nn.ConvBNAct(16, 8, 3, stride=2, act="relu6"),
    "v2_block": small_v2_block,
    "v3_block": small_v3_block,
}


@pytest.mark.parametrize("edit", EDITS, ids=edit_ids)
@pytest.mark.parametrize("layer", LAYERS)
def test_fused_modules_see_every_edit(layer, edit, backend_name, randomize_bn):
    module = randomize_bn(LAYERS[layer]()).eval()
    x = torch.randn(2, 16, 10, 10)
    with backend.use_backend(backend_name), torch.no_grad():
        for _ in range(2):
            assert_close(module(x), copy.deepcopy(module).double()(x.double()), torch.float32)
        for p in module.parameters():  # convs' weights and the BatchNorms' folded affines
            edit(p)
        out = module(x)
    assert_close(out, copy.deepcopy(module).double()(x.double()), torch.float32)


@pytest.mark.parametrize("layer", LAYERS)
def test_tensors_held_as_plain_attributes(layer, backend_name, randomize_bn):
    """A module's tensors set as plain attributes (not registered parameters or buffers, as
    functional-call or LoRA-style code does) and then edited in place are seen: such a
    module runs as itself (nn.layers.plain)."""
    module = randomize_bn(LAYERS[layer]()).eval()
    x = torch.randn(2, 16, 10, 10)
    held = []
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.Conv2d)):
            for name in ("running_var", "weight") if isinstance(m, nn.BatchNorm2d) else ("weight",):
                tensor = getattr(m, name).detach().clone()
                delattr(m, name)
                setattr(m, name, tensor)
                held.append(tensor)
    with backend.use_backend(backend_name), torch.no_grad():
        for _ in range(2):
            module(x)
        for t in held:
            t.mul_(1.5)
        out = module(x)
    oracle = copy.deepcopy(module).double()
    for m in oracle.modules():  # .double() converts only registered tensors
        for name, value in list(vars(m).items()):
            if isinstance(value, torch.Tensor):
                setattr(m, name, value.double())
    assert_close(out, oracle(x.double()), torch.float32)


def flatten_into_one_storage(module):
    """Every parameter and buffer of module made a view into one flat tensor (as flat-parameter
    wrappers do): a weight a cached value holds then shares its storage with BatchNorm tensors
    the value was folded from."""
    tensors = [t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()]
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    offset = 0
    for t in tensors:
        t.data = flat[offset:offset + t.numel()].view_as(t)
        offset += t.numel()
    return module


@pytest.mark.parametrize("layer", LAYERS)
def test_tensors_sharing_one_storage(layer, backend_name, randomize_bn):
    module = flatten_into_one_storage(randomize_bn(LAYERS[layer]()).eval())
    x = torch.randn(2, 16, 10, 10)
    with backend.use_backend(backend_name), torch.no_grad():
        for _ in range(2):
            module(x)
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_var.mul_(4)
        out = module(x)
    assert_close(out, copy.deepcopy(module).double()(x.double()), torch.float32)


def calls(model, x, n):
    with torch.no_grad():
        return [model(x) for _ in range(n)]


@pytest.mark.parametrize("edit", EDITS, ids=edit_ids)
def test_models_eval_program_sees_every_edit(edit, backend_name, randomize_bn, accurate):
    # On cpp the third call runs the program built from the model (fastdw.models.eval_program).
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    with backend.use_backend(backend_name):
        before = calls(model, x, 3)[-1]
        with torch.no_grad():
            for p in model.parameters():
                edit(p)
        after = calls(model, x, 2)
    assert rel_err(after[-1], before) > REL_TOL[torch.float32]  # the edit shows
    assert all(accurate(out, model, x) for out in after)


def test_models_see_blocks_reordered_in_place(randomize_bn, accurate):
    model = randomize_bn(fastdw.models.mobilenet_v2(num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    before = calls(model, x, 3)[-1]
    blocks = model.features._modules
    assert blocks["5"].conv[0][0].weight.shape == blocks["6"].conv[0][0].weight.shape
    blocks["5"], blocks["6"] = blocks["6"], blocks["5"]
    after = calls(model, x, 2)
    assert rel_err(after[-1], before) > REL_TOL[torch.float32]
    assert all(accurate(out, model, x) for out in after)
    # and with the dict rebuilt, as a new object
    items = list(model.features._modules.items())
    items[5], items[6] = (items[5][0], items[6][1]), (items[6][0], items[5][1])
    model.features._modules = collections.OrderedDict(items)
    assert all(accurate(out, model, x) for out in calls(model, x, 2))
    # and reordered within the same dict: each key keeps its block, blocks 5 and 6 swap turns
    blocks = model.features._modules
    before = calls(model, x, 3)[-1]
    for key in [*list(blocks)[:5], "6", "5", *list(blocks)[7:]]:
        blocks[key] = blocks.pop(key)
    after = calls(model, x, 2)
    assert rel_err(after[-1], before) > REL_TOL[torch.float32]
    assert all(accurate(out, model, x) for out in after)


def test_compiled_model_sees_load_state_dict(randomize_bn, accurate):
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    compiled = torch.compile(model)
    x = torch.randn(1, 3, 64, 64)
    calls(compiled, x, 2)
    other = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10), seed=7)
    model.load_state_dict(other.state_dict())
    assert all(accurate(out, model, x) for out in calls(compiled, x, 2))
