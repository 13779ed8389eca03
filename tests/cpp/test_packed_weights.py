"""The packed-weight cache of the C++ kernels (csrc/cpu/packed_weights.cpp): a weight is packed
once and reused while its bytes are unchanged, and every change gives a result computed from the
new values (each call is checked against the float64 reference). tests/reliability has the
edits that move no version counter, torch.compile, threads and fork."""
import concurrent.futures
import gc

import pytest
import torch

from fastdw.contract import BlockWeights
from fastdw.kernels import reference

pytest.importorskip("fastdw._C", reason="fastdw._C is not built")

OPS = torch.ops.fastdw_cpp


def f64(t):
    return None if t is None else t.double()


def close(out, ref):
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err < 1e-5, f"relative error {err:.3g}: packed weights out of date?"


class Pw:
    """pwconv_bn_act on a fixed input; weight given per call."""
    def __init__(self, cin=24, cout=80):
        self.x = torch.randn(2, cin, 5, 6).to(memory_format=torch.channels_last)
        self.scale, self.shift = torch.rand(cout) + 0.5, torch.randn(cout)
        self.shape = (cout, cin)

    def check(self, w):
        out = OPS.pwconv_bn_act(self.x, w, self.scale, self.shift, "relu", None)
        close(out, reference.pwconv_bn_act(f64(self.x), f64(w), f64(self.scale),
                                           f64(self.shift), "relu", None))


class Dw:
    def __init__(self, c=40):
        self.x = torch.randn(2, c, 9, 9).to(memory_format=torch.channels_last)
        self.scale, self.shift = torch.rand(c) + 0.5, torch.randn(c)
        self.shape = (c, 1, 3, 3)

    def check(self, w):
        out = OPS.dwconv_bn_act(self.x, w, self.scale, self.shift, 1, 1, 1, "relu6")
        close(out, reference.dwconv_bn_act(f64(self.x), f64(w), f64(self.scale),
                                           f64(self.shift), 1, 1, 1, "relu6"))


class IrProject:
    """inverted_residual with the project weight given per call (expand and depthwise fixed)."""
    def __init__(self, cin=16, hidden=48, cout=72):
        self.x = torch.randn(1, cin, 7, 7).to(memory_format=torch.channels_last)
        self.fixed = [torch.randn(hidden, cin) / 4, torch.rand(hidden) + .5, torch.randn(hidden),
                      torch.randn(hidden, 1, 3, 3), torch.rand(hidden) + .5, torch.randn(hidden)]
        self.scale, self.shift = torch.rand(cout) + 0.5, torch.randn(cout)
        self.shape = (cout, hidden)

    def check(self, w):
        weights = [*self.fixed, w, self.scale, self.shift, None, None, None, None]
        out = OPS.inverted_residual(self.x, weights, 1, "relu6", False, "relu", "hardsigmoid")
        close(out, reference.inverted_residual(f64(self.x), BlockWeights(*map(f64, weights)), 1,
                                               "relu6", False, "relu", "hardsigmoid"))


PROBLEMS = [Pw, Dw, IrProject]


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.__name__)
def test_in_place_edits_are_seen(problem):
    prob = problem()
    w = torch.nn.Parameter(torch.randn(prob.shape))
    prob.check(w)
    prob.check(w)  # cached
    with torch.no_grad():
        w.mul_(-2)  # an optimizer-style in-place step bumps the version counter
    prob.check(w)
    with torch.no_grad():
        w.copy_(torch.randn(prob.shape))  # load_state_dict
    prob.check(w)
    w.data = torch.randn(prob.shape)  # new storage behind the same Parameter
    prob.check(w)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.__name__)
def test_freed_weights_are_not_reused(problem):
    # A new weight often lands at the address of a freed one; it must still be packed afresh.
    prob = problem()
    for _ in range(20):
        w = torch.randn(prob.shape)
        prob.check(w)
        del w
        gc.collect()


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.__name__)
def test_views_of_one_storage_are_told_apart(problem):
    prob = problem()
    n = prob.shape[0]
    big = torch.randn(2 * n, *prob.shape[1:])
    prob.check(big[:n])
    prob.check(big[n:])  # same storage, other offset
    if len(prob.shape) == 2:
        t = torch.randn(prob.shape[::-1])
        prob.check(t.t())  # same storage as t.t().contiguous() would not be; strides differ
        prob.check(t.t().contiguous())


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.__name__)
def test_inference_tensors_are_checked_like_any_other(problem):
    prob = problem()
    with torch.inference_mode():
        w = torch.randn(prob.shape)
        prob.check(w)
        prob.check(w)
        w.mul_(-2)  # an inference tensor has no version counter; the cache reads none
        prob.check(w)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.__name__)
def test_weights_that_are_not_one_dense_block(problem):
    # Every other column of a wider tensor: packed on every call, edits seen.
    prob = problem()
    wide = torch.randn(prob.shape[0], 2 * prob.shape[1], *prob.shape[2:])
    w = wide[:, ::2]
    prob.check(w)
    w.mul_(-2)
    prob.check(w)


def test_threads_share_the_cache():
    problems = [Pw(), Dw(), IrProject()]
    weights = [torch.randn(p.shape) for p in problems]

    def work(i):
        p = problems[i % 3]
        for _ in range(5):
            p.check(weights[i % 3])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(12)))


@pytest.mark.parametrize("k", [1, 3])
def test_the_cache_does_not_keep_weights_alive(k):
    # A packed copy must never be a view of the weight (for k = 1 a transpose already is
    # contiguous), or the cache entry would hold the weight's storage forever.
    x = torch.randn(1, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 1, k, k)
    ref = w.untyped_storage()._weak_ref()  # torch's own storage weak reference
    try:
        OPS.dwconv_bn_act(x, w, torch.ones(8), torch.zeros(8), 1, k // 2, 1, "none")
        del w
        gc.collect()
        assert torch.UntypedStorage._expired(ref)
    finally:
        torch.UntypedStorage._free_weak_ref(ref)
