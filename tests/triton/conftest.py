"""Fixtures of the Triton kernel tests, and tests/ops on sys.path: the tests here compare
with its float64 stock-PyTorch oracle (`import op_oracle`)."""
import math
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "ops"))


@pytest.fixture
def poisoned(monkeypatch):
    """Every float tensor the kernels' launchers allocate (torch.empty, torch.empty_like,
    Tensor.new_empty) starts as NaN."""
    empty, empty_like, new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty

    def poison(t):
        return t.fill_(math.nan) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty",
                        lambda self, *a, **k: poison(new_empty(self, *a, **k)))
