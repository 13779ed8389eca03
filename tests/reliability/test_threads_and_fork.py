"""Threads and fork: a weight written by another thread while calls run is seen, once the write
is over, by every call after it (nothing packed or folded during the write outlives it); and a
process forked while another thread is inside a fastdw kernel (a DataLoader worker, a pre-fork
server) runs fastdw ops instead of hanging on a lock that thread held."""
import multiprocessing
import threading

import pytest
import torch
import torch.nn.functional as F

import fastdw
from fastdw import backend
from numerics import assert_close


def pw(x, w):
    return fastdw.ops.pwconv_bn_act(x, w)


def pw_ref(x, w):
    return F.conv2d(x.double(), w.double()[:, :, None, None])


def test_a_write_during_calls_is_seen_after_it(backend_name):
    # Calls overlap a writer flipping the weight between two values; when it stops, the weight
    # holds one of them, and every later call must compute with it. (Before the fix the cache
    # could pair a pack of the old values with the new version counter: stale until the next
    # edit.)
    x = torch.randn(1, 64, 4, 4)
    values = [torch.randn(96, 64), torch.randn(96, 64)]
    w = values[0].clone()
    with backend.use_backend(backend_name), torch.no_grad():
        for trial in range(20):
            stop = threading.Event()

            def write():
                i = 0
                while not stop.is_set():
                    i += 1
                    w.copy_(values[i % 2])

            writer = threading.Thread(target=write)
            writer.start()
            try:
                for _ in range(5):
                    pw(x, w)  # racing the writer: any result
            finally:
                stop.set()
                writer.join()
            for _ in range(2):
                assert_close(pw(x, w), pw_ref(x, w), torch.float32)


def test_eval_inference_beside_a_training_thread(backend_name, randomize_bn, accurate):
    # One thread serves the eval model while another steps its parameters in place; once the
    # steps end, the served outputs are those of the final parameters. The steps go back and
    # forth, so a value folded from the other state while a copy of this one was taken would be
    # wrong and never look stale (fastdw/nn/cache.py computes values from its copies).
    model = randomize_bn(fastdw.models.mobilenet_v3_small(num_classes=10)).eval()
    x = torch.randn(1, 3, 32, 32)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    optimizer = torch.optim.SGD(params, lr=1.0, foreach=True)
    for trial in range(2):
        def train():
            for _ in range(40):
                optimizer.step()
                for p in params:  # back and forth, so the weights stay bounded
                    p.grad.neg_()

        trainer = threading.Thread(target=train)
        with backend.use_backend(backend_name), torch.no_grad():
            trainer.start()
            try:
                while trainer.is_alive():
                    model(x)
            finally:
                trainer.join()
            outs = [model(x) for _ in range(2)]
        assert all(accurate(out, model, x) for out in outs), f"trial {trial}"


def _child(backend_name, x, w, expected):
    torch.set_num_threads(1)  # as DataLoader workers do
    with backend.use_backend(backend_name), torch.no_grad():
        out = pw(x, w)
    raise SystemExit(0 if torch.allclose(out.double(), expected, rtol=1e-4, atol=1e-4) else 3)


def test_fork_while_another_thread_runs_kernels(backend_name):
    if backend_name == "triton":
        pytest.skip("Triton's interpreter runs tl.dot through numpy's OpenBLAS, whose level-3 "
                    "lock a child forked mid-matmul inherits held (a GPU runs the kernels "
                    "on the device, and CUDA itself cannot be used after fork)")
    x = torch.randn(2, 64, 8, 8)
    w = torch.randn(96, 64) / 8
    expected = pw_ref(x, w)
    stop = threading.Event()

    def load():
        with backend.use_backend(backend_name), torch.no_grad():
            while not stop.is_set():
                pw(x, torch.randn(96, 64))  # a new weight each time: the cache inserts

    worker = threading.Thread(target=load)
    worker.start()
    hung = []
    try:
        fork = multiprocessing.get_context("fork")
        for _ in range(20):
            child = fork.Process(target=_child, args=(backend_name, x, w, expected))
            child.start()
            child.join(timeout=60)
            if child.exitcode is None:
                child.kill()
                child.join()
                hung.append(child)
            else:
                assert child.exitcode == 0, f"child exited with {child.exitcode}"
    finally:
        stop.set()
        worker.join()
    assert not hung, f"{len(hung)} of 20 forked children hung"
