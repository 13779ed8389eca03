"""fastdw.nn.cache's stamp, which every cached eval forward checks on each call: unchanged()
answers False after every kind of edit and True after none, and its C version (csrc/stamp.cpp,
what fastdw runs when fastdw._C is built) gives the Python version's answer every time."""
import pytest
import torch
from torch import nn

import fastdw.models
from fastdw.nn import cache

try:
    from fastdw._C import stamp_unchanged
except ImportError:  # the C check is missing: only the Python one runs
    stamp_unchanged = None

CHECKS = {
    "python": cache.unchanged_py,
    "c": pytest.param(stamp_unchanged, marks=pytest.mark.skipif(
        stamp_unchanged is None, reason="needs fastdw._C, which is not built")),
}


def reinsert(module, name):
    value = getattr(module, name)
    delattr(module, name)
    setattr(module, name, value)  # same content, another order in the dict


EDITS = {  # name -> (edit of a MobileNetV3-Small, whether the model changed)
    "nothing": (lambda m: None, False),
    "eval() again": (lambda m: m.eval(), False),
    "attribute re-inserted": (lambda m: reinsert(m.features[-1][1], "eps"), False),
    "attribute": (lambda m: setattr(m.features[-1][1], "eps", 0.25), True),
    "train() of a leaf": (lambda m: m.classifier[2].train(), True),
    "buffer in place": (lambda m: m.features[-1][1].running_var.mul_(3), True),
    "parameter swapped": (lambda m: setattr(m.classifier[3], "weight",
                                            nn.Parameter(m.classifier[3].weight.clone())), True),
    ".data swapped": (lambda m: setattr(m.classifier[3].weight, "data",
                                        torch.randn_like(m.classifier[3].weight)), True),
    "buffer set to None": (lambda m: setattr(m.features[-1][1], "running_mean", None), True),
    "module replaced": (lambda m: m.features.__setitem__(-1, nn.Identity()), True),
    "class swapped": (lambda m: setattr(m.classifier[2], "__class__", nn.Identity), True),
    "hook added": (lambda m: m.features[3].register_forward_hook(lambda *a: None), True),
    "class attribute": (lambda m: setattr(type(m), "_forward_modules", lambda self, x: x), True),
    "__dict__ replaced": (lambda m: setattr(m.features[-1][1], "__dict__",
                                            {**m.features[-1][1].__dict__, "eps": 0.25}), True),
}


@pytest.mark.parametrize("check", CHECKS.values(), ids=CHECKS.keys())
@pytest.mark.parametrize("edit", EDITS)
def test_stamp_sees_every_edit(edit, check, monkeypatch):
    # The class-attribute edit must not outlive the test.
    monkeypatch.setattr(fastdw.models.MobileNetV3, "_forward_modules",
                        fastdw.models.MobileNetV3._forward_modules)
    model = fastdw.models.mobilenet_v3_small(num_classes=10).eval()
    stamp = cache.take_stamp(model)
    assert check(stamp)
    change, changed = EDITS[edit]
    with torch.no_grad():
        change(model)
    assert check(stamp) is (not changed)
    assert cache.unchanged_py(stamp) is (not changed)


@pytest.mark.parametrize("check", CHECKS.values(), ids=CHECKS.keys())
def test_an_attribute_whose_equality_raises_counts_as_changed(check):
    model = fastdw.models.mobilenet_v3_small(num_classes=10).eval()
    model.note = torch.ones(2)
    stamp = cache.take_stamp(model)
    assert check(stamp)
    model.note = torch.zeros(2)  # dict == compares the tensors: bool() of two elements raises
    assert check(stamp) is False


class Odd:
    """An attribute value whose == runs code: raises `error`, or empties the stamp's lists."""

    def __init__(self, error=None, stamp=None):
        self.error, self.stamp = error, stamp

    def __eq__(self, other):
        if self.error is not None:
            raise self.error
        for part in self.stamp or ():
            part.clear()
        return False

    __hash__ = object.__hash__


@pytest.mark.parametrize("check", CHECKS.values(), ids=CHECKS.keys())
def test_an_equality_that_raises_something_else_propagates(check):
    model = nn.Sequential(nn.Linear(2, 2))
    model.note = Odd()
    stamp = cache.take_stamp(model)
    model.note = Odd(KeyError("broken __eq__"))  # a bug, or KeyboardInterrupt: not "changed"
    with pytest.raises(KeyError, match="broken __eq__"):
        check(stamp)


@pytest.mark.skipif(stamp_unchanged is None, reason="needs fastdw._C, which is not built")
def test_the_c_check_survives_an_equality_that_empties_the_stamp():
    # The C loops read the stamp's lists through borrowed pointers: they must not read past
    # lists an attribute's == has emptied (Python's own list == is safe by construction).
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    model.note = Odd()
    stamp = cache.take_stamp(model)
    model.note = Odd(stamp=[part for part in stamp if isinstance(part, list)])
    assert stamp_unchanged(stamp) is False


@pytest.mark.parametrize("check", CHECKS.values(), ids=CHECKS.keys())
def test_a_stamp_of_another_shape_is_not_unchanged(check):
    stamp = cache.take_stamp(nn.Sequential(nn.Linear(2, 2)))
    assert check(stamp)
    assert check(stamp[:-1] + ([],)) is False  # a list of byte copies that does not fit
