"""fastdw.convert's arguments and report, and the modules it makes on small nets: a plain
nn.Sequential, a flat Sequential of several layers, modules built from timm's layers, a module
whose forward torch.fx cannot trace, hooks and edits after convert, copies."""
import copy
import io
import pickle

import pytest
import torch
import torchvision
from torch import nn

import fastdw
import fastdw.nn as fnn
import numerics
from convert_cases import small_timm_net
from fastdw.nn.convert_fused import FusedChain, FusedSequential


def flat_block():
    """MNASNet-style: expand, depthwise, project as one flat Sequential of 8 modules."""
    return nn.Sequential(nn.Conv2d(8, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False),
                         nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 8, 1, bias=False), nn.BatchNorm2d(8))


def check_same(new, old, x, accurate):
    """new is old converted: same state_dict (keys and tensors) and eval output."""
    assert list(new.state_dict()) == list(old.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(),
                                                  old.state_dict().values()))
    with torch.no_grad():
        assert accurate(new(x), old, x)


def test_plain_sequential_becomes_a_fastdw_layer(randomize_bn, accurate):
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False),
                                       nn.BatchNorm2d(16), nn.ReLU6())).eval()
    new, report = fastdw.convert(model, return_report=True)
    assert type(new) is fnn.ConvBNAct and new.act == "relu6" and type(model) is nn.Sequential
    assert [c.name for c in report.converted] == [""] and not report.left
    check_same(new, model, torch.randn(2, 3, 16, 16), accurate)


def test_flat_sequential_fuses_runs_and_keeps_indices(randomize_bn, accurate):
    model = randomize_bn(nn.Sequential(*flat_block(), nn.GELU())).eval()
    new, report = fastdw.convert(model, return_report=True)
    assert type(new) is FusedSequential and len(new) == 9 and type(new[8]) is nn.GELU
    assert type(new[:3]) is nn.Sequential and new[:3][0] is new[0]
    assert "inverted_residual" in report.converted[0].into
    check_same(new, model, torch.randn(2, 8, 10, 10), accurate)


def test_residual_block_with_drop_path_in_both_modes(randomize_bn, accurate, timm_parts):
    """A timm InvertedResidual with DropPath on its residual: fused with the residual in eval;
    in training the same DropPath rows as the original's from the same seed."""
    model = randomize_bn(timm_parts.InvertedResidual(16, 16, exp_ratio=4, drop_path_rate=0.5,
                                                     se_layer=timm_parts.SqueezeExcite,
                                                     act_layer=nn.SiLU))
    new, report = fastdw.convert(model.eval(), return_report=True)
    assert type(new) is FusedChain and new.has_skip is True
    # one op: expand, depthwise, EfficientNet's SE, project and the residual
    assert report.converted[0].into == ("inverted_residual(expand + dw3x3 silu + SE "
                                        "silu/sigmoid, residual)"), str(report)
    x = torch.randn(4, 16, 8, 8)
    check_same(new, model, x, accurate)
    model.train(), new.train()
    outs = []
    for m, seed in ((model, 0), (new, 0), (new, 1)):
        torch.manual_seed(seed)
        outs.append(m(x))
    same, other = (numerics.rel_err(out, outs[0]) for out in outs[1:])
    assert same == 0 and other > 1e-2  # training runs the very same modules


def test_modules_built_from_timm_layers(randomize_bn, accurate, timm_parts):
    model = nn.Sequential(
        *small_timm_net(timm_parts, nn.Hardswish, nn.ReLU, 24, dw_kernel_size=5, stride=2,
                        exp_ratio=3),
        nn.Sequential(nn.Conv2d(24, 24, 1, bias=False), timm_parts.BatchNormAct2d(24)))
    model = randomize_bn(model).eval()
    new, report = fastdw.convert(model, return_report=True)
    assert [c.name for c in report.converted] == ["0", "1", "2", "3"], str(report)
    assert all(isinstance(m, FusedChain) for m in new) and not report.left
    check_same(new, model, torch.randn(2, 3, 32, 32), accurate)


class Untraceable(nn.Module):
    """A forward that branches on its input's values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.body = flat_block()

    def forward(self, x):
        x = self.stem(x)
        return self.body(x) if x.mean() > -1e9 else x


def test_untraceable_model_converts_at_the_module_level(randomize_bn, accurate):
    model = randomize_bn(Untraceable()).eval()
    new, report = fastdw.convert(model, return_report=True)
    assert type(new) is Untraceable
    assert type(new.stem) is fnn.ConvBNAct and type(new.body) is FusedSequential
    check_same(new, model, torch.randn(2, 3, 12, 12), accurate)


def test_exclude_verbose_and_inplace(capsys):
    model = torchvision.models.mobilenet_v2()
    before = [type(m) for m in model.modules()]
    new = fastdw.convert(model, exclude=["features.2", "classifier"], verbose=True)
    printed = capsys.readouterr().out
    assert "features.2: InvertedResidual: excluded" in printed and "converted" in printed
    assert [type(m) for m in model.modules()] == before  # inplace=False
    assert type(new.features[2]) is type(model.features[2])
    assert type(new.features[2].conv[0]) is torchvision.ops.Conv2dNormActivation
    assert type(new.features[3]) is fnn.InvertedResidual
    assert fastdw.convert(model, inplace=True) is model
    assert type(model.features[3]) is fnn.InvertedResidual


def test_bad_arguments_name_themselves():
    model = flat_block()
    with pytest.raises(TypeError, match="model"):
        fastdw.convert("mobilenet_v2")
    with pytest.raises(ValueError, match="exclude: 'features.3' names no module"):
        fastdw.convert(model, exclude=["features.3"])
    with pytest.raises(TypeError, match="exclude"):
        fastdw.convert(model, exclude=3)
    with pytest.raises(TypeError, match="exclude"):
        fastdw.convert(model, exclude=[0])


def test_what_is_left_says_why():
    biased = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8),
                           nn.ReLU())
    dilated = nn.Sequential(nn.Conv2d(8, 8, 3, padding=2, dilation=(2, 1), groups=8,
                                      bias=False), nn.BatchNorm2d(8))
    lone = nn.Conv2d(8, 8, 1)
    model = nn.Sequential(biased, dilated, lone)
    new, report = fastdw.convert(model, return_report=True)
    why = {entry.name: entry.why for entry in report.left}
    assert "bias" in why["0.0"] and "asymmetric" in why["1.0"]
    assert "not followed by a BatchNorm2d" in why["2"]
    assert not report.converted
    assert [type(m) for m in new.modules()] == [type(m) for m in model.modules()]


def test_hooks_and_edits_after_convert_run_the_modules(randomize_bn):
    model = randomize_bn(nn.Sequential(*flat_block())).eval()
    new = fastdw.convert(model)
    x = torch.randn(2, 8, 6, 6)
    seen = []
    handle = new[3].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        out = new(x)
    handle.remove()
    assert len(seen) == 1 and torch.equal(out, model(x))  # the modules themselves ran
    new[5] = nn.Hardswish()  # an edited child: the chain as it is now
    model[5] = nn.Hardswish()
    with torch.no_grad():
        assert torch.equal(new(x), model(x))


def test_copies_and_pickles_keep_the_plan(randomize_bn, accurate):
    model = randomize_bn(nn.Sequential(*flat_block())).eval()
    new = fastdw.convert(model)
    x = torch.randn(2, 8, 6, 6)
    buffer = io.BytesIO()
    torch.save(new, buffer)
    buffer.seek(0)
    for copied in (copy.deepcopy(new), torch.load(buffer, weights_only=False),
                   pickle.loads(pickle.dumps(new))):
        assert type(copied) is FusedSequential
        assert all(copied.get_submodule(a.path) is a.module for a in copied._atoms())
        with torch.no_grad():
            assert accurate(copied(x), model, x)


def test_fastdw_nn_convert_still_converts_in_place():
    model = torchvision.models.mobilenet_v2()
    assert fnn.convert(model) is model and type(model.features[3]) is fnn.InvertedResidual
