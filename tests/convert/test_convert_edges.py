"""fastdw.convert on modules that look like what it fuses and are not quite: squeeze-excites
pooling in other ways, activation modules with edited bounds, hooks registered before convert,
attributes a converted module's forward was read with. Each case once failed silently or
crashed."""
import copy
import types

import pytest
import torch
from torch import nn

import fastdw
from fastdw.nn.layers import RUN_CHILDREN

C = 16


class MeanSE(nn.Module):
    """A squeeze-excite whose pool is x.mean(dims, keepdim=True), its convs named otherwise
    than fastdw's SqueezeExcite (so that it stays this class, as timm's does)."""

    def __init__(self, channels, dims):
        super().__init__()
        self.dims = dims
        self.reduce, self.act = nn.Conv2d(channels, 4, 1), nn.ReLU()
        self.expand, self.gate = nn.Conv2d(4, channels, 1), nn.Sigmoid()

    def forward(self, x):
        pooled = x.mean(self.dims, keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(pooled))))


def mbconv(se):
    """expand 1x1, depthwise 3x3, se, project 1x1 as one flat Sequential."""
    return nn.Sequential(nn.Conv2d(C, 2 * C, 1, bias=False), nn.BatchNorm2d(2 * C), nn.ReLU(),
                         nn.Conv2d(2 * C, 2 * C, 3, padding=1, groups=2 * C, bias=False),
                         nn.BatchNorm2d(2 * C), nn.ReLU(), se,
                         nn.Conv2d(2 * C, C, 1, bias=False), nn.BatchNorm2d(C))


@pytest.mark.parametrize("dims", [2, (2, 3)])
def test_squeeze_excite_pooling_one_axis_is_left(dims, randomize_bn, accurate):
    """x.mean(2) pools one axis only: not a squeeze-excite (convert used to crash on the int)."""
    model = randomize_bn(mbconv(MeanSE(2 * C, dims))).eval()
    new, report = fastdw.convert(model, return_report=True)
    fused_se = "SE relu/sigmoid" in report.converted[0].into
    assert fused_se == (dims == (2, 3)), str(report)
    x = torch.randn(2, C, 8, 8)
    with torch.no_grad():
        assert accurate(new(x), model, x)


def dw_layer(act):
    return [nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False), nn.BatchNorm2d(C), act]


def clipped():
    """A ReLU6 whose bounds were edited: no longer relu6."""
    act = nn.ReLU6()
    act.max_val = 0.5
    return act


@pytest.mark.parametrize("tail", [[], [nn.GELU()]], ids=["layer", "chain"])
def test_relu6_with_edited_bounds(tail, randomize_bn, accurate):
    """A ReLU6 clipping at 0.5 is not fused as relu6, whether convert finds it so or it is
    edited after convert (fastdw's layer used to replace it by a new ReLU6)."""
    model = randomize_bn(nn.Sequential(*dw_layer(clipped()), *tail)).eval()
    x = torch.randn(2, C, 8, 8)
    new = fastdw.convert(model)
    with torch.no_grad():
        assert accurate(new(x), model, x)
    model[2].max_val = 6.0
    new = fastdw.convert(model)
    with torch.no_grad():
        new(x)  # binds the fused ops
        new[2].max_val = model[2].max_val = 0.5
        assert accurate(new(x), model, x)


def test_hooks_registered_before_convert_still_run(randomize_bn, accurate, timm_parts):
    """Forward hooks (and pre-hooks) on modules convert() replaces run on their replacements,
    see the same values, and their handles still remove them; a hook on a converted block
    itself leaves its forward fused. They used to be dropped silently."""
    from torchvision.models.mobilenetv2 import InvertedResidual
    model = randomize_bn(nn.Sequential(
        InvertedResidual(C, C, 1, 4), nn.Sequential(*dw_layer(nn.ReLU())),
        timm_parts.InvertedResidual(C, C, exp_ratio=2))).eval()
    reference = copy.deepcopy(model)
    watched = {"0": model[0], "0.conv": model[0].conv, "0.conv.0": model[0].conv[0],
               "1.2": model[1][2], "2": model[2]}
    seen = {}

    def keep(name):
        def hook(module, args, *output):
            seen[name] = (output or args)[0]  # returns None: the output stays as it is
        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in watched.items()]
    handles.append(model[1].register_forward_pre_hook(keep("1<")))
    x = torch.randn(2, C, 8, 8)
    with torch.no_grad():
        model(x)
    new = fastdw.convert(model, inplace=True)  # the handles hold the model's hook dicts
    expected = dict(seen)
    seen.clear()
    assert all(type(new.get_submodule(n)) is not type(m) for n, m in watched.items()
               if n in ("0", "0.conv.0", "2"))
    with torch.no_grad():
        assert accurate(new(x), reference, x)
        assert new[2]._bind() not in (None, RUN_CHILDREN)  # its own hook: still fused
    assert seen.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.allclose(seen[name], value, rtol=1e-4, atol=1e-5), name
    for handle in handles:
        handle.remove()
    seen.clear()
    with torch.no_grad():
        new(x)
    assert not seen


def test_a_forward_set_on_the_instance_is_kept(randomize_bn):
    """convert() reads a module's class's forward: one set on the module itself (a patch) keeps
    the module as it is, and the report says so (it used to be replaced silently)."""
    patched = nn.Sequential(*dw_layer(nn.ReLU()), nn.GELU())
    patched.forward = types.MethodType(lambda self, x: nn.Sequential.forward(self, x).neg(),
                                       patched)
    model = randomize_bn(nn.Sequential(patched)).eval()
    new, report = fastdw.convert(model, inplace=True, return_report=True)
    assert new[0] is patched and "forward is set on the module" in str(report)


class Switch(nn.Module):
    """A forward that a plain attribute steers."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.act = dw_layer(nn.ReLU())
        self.use_act = True

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.act(y) if self.use_act else y


def test_an_attribute_the_forward_was_read_with_is_fixed(randomize_bn, accurate):
    """A FusedChain runs the forward convert() read with the original's attributes: changing
    one raises, naming it, instead of being ignored (the output used to stay the old one)."""
    model = randomize_bn(nn.Sequential(Switch())).eval()
    new = fastdw.convert(model)
    new[0].use_act = True  # the same value: allowed
    with pytest.raises(AttributeError, match="'use_act' of this converted"):
        new[0].use_act = False
    x = torch.randn(2, C, 8, 8)
    with torch.no_grad():
        assert accurate(new(x), model, x)


def test_a_padding_given_by_name_is_reported_as_such():
    """padding='same' is symmetric: the report names the padding, not an asymmetric conv."""
    model = nn.Sequential(nn.Conv2d(C, C, 3, padding="same", groups=C, bias=False),
                          nn.BatchNorm2d(C), nn.ReLU())
    _, report = fastdw.convert(model, return_report=True)
    assert [entry.why for entry in report.left] == [
        "padding='same': fastdw's depthwise and 1x1 layers take the padding as numbers"]


def test_weight_norm_is_left_and_said_so():
    """A weight-normed conv (a pre-hook computing its weight) is left, the report says why
    (it used to call the conv asymmetric); the copy inplace=False makes cannot be taken, and
    the error says what to do."""
    conv = nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False)
    with pytest.warns(FutureWarning):
        model = nn.Sequential(nn.utils.weight_norm(conv), nn.BatchNorm2d(C), nn.ReLU()).eval()
    with pytest.raises(RuntimeError, match="pass inplace=True"):
        fastdw.convert(model, inplace=False)
    new, report = fastdw.convert(model, inplace=True, return_report=True)
    assert new is model and "its Conv2d has hooks" in report.left[0].why


def test_exclude_by_class():
    """exclude= takes module classes too (it used to refuse them): every module of that class
    is left, whatever its name; a class no module has excludes nothing; other types raise."""
    model = nn.Sequential(nn.Sequential(*dw_layer(nn.ReLU())), mbconv(nn.Identity()))
    new, report = fastdw.convert(model, exclude=nn.ReLU, return_report=True)
    assert type(new[0]) is nn.Sequential and type(new[1][2]) is nn.ReLU  # both hold a ReLU
    assert {entry.name for entry in report.left} >= {"0.2", "1.2", "1.5"}
    assert type(fastdw.convert(model, exclude=[nn.GELU])[0]).__name__ == "DWConvBNAct"
    with pytest.raises(TypeError, match="exclude must hold module names"):
        fastdw.convert(model, exclude=[int])


def test_a_scripted_model_is_refused_by_name():
    """torch.jit.script's modules used to fail with a bare KeyError deep inside convert()."""
    with pytest.warns(FutureWarning):  # torch.jit.script is deprecated
        model = torch.jit.script(nn.Sequential(*dw_layer(nn.ReLU())).eval())
    with pytest.raises(TypeError, match="model is a TorchScript module"):
        fastdw.convert(model)


class Scale(nn.Module):
    """x * (1 + scale), and x itself while scale is 0: the identity when convert() reads it."""

    def __init__(self):
        super().__init__()
        self.scale = 0.0

    def forward(self, x):
        return x * (1 + self.scale) if self.scale else x


def test_a_leaf_skipped_as_the_identity_is_run_once_it_is_not(randomize_bn, accurate):
    """A parameter-free leaf convert() skipped as the identity in eval runs again once a flag
    makes it compute something (it used to stay skipped, silently)."""
    layer = dw_layer(nn.ReLU())
    model = randomize_bn(nn.Sequential(*layer[:2], Scale(), layer[2], nn.GELU())).eval()
    new = fastdw.convert(model)
    x = torch.randn(2, C, 8, 8)
    with torch.no_grad():
        assert accurate(new(x), model, x)
        new[2].scale = model[2].scale = 1.0
        assert accurate(new(x), model, x)


def test_a_module_swapped_inside_a_squeeze_excite_unfuses(randomize_bn, accurate):
    """An SE's act or gate replaced after convert (the model in eval again): the block runs
    its modules as they are now (the fused op kept the old act and gate, silently)."""
    model = randomize_bn(nn.Sequential(mbconv(MeanSE(2 * C, (2, 3))))).eval()
    new = fastdw.convert(model)
    x = torch.randn(2, C, 8, 8)
    with torch.no_grad():
        new(x)
        for m in (new, model):
            m[0][6].act, m[0][6].gate = nn.Hardswish(), nn.Hardsigmoid()
            m.eval()
        assert accurate(new(x), model, x)
