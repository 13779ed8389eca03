"""The GPU build of the cuda backend: setup.py builds fastdw.kernels._C_cuda where torch is a
CUDA build and nvcc is found (FASTDW_BUILD_CUDA=auto|0|1, fastdw/kernels/cpp_build.py), it
imports without a GPU, registers its ops for the CUDA dispatch key, and `python -m fastdw info`
says whether it was built and, if not, why. Where there is a GPU, the kernels run on it against
the float64 oracle (skipped elsewhere, naming the missing device)."""
import os
import re
import subprocess
import sys

import pytest
import torch

from fastdw.kernels import cpp_build, cuda

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLKIT = cpp_build.cuda_toolkit()
TOOLKIT_VERSION = cpp_build.nvcc_version(TOOLKIT) if TOOLKIT else None
# Whether setup.py builds the extension in this environment (as CI's install ran it).
EXPECT_BUILT = cpp_build.cuda_build_decision(os.environ, torch.version.cuda, TOOLKIT,
                                             TOOLKIT_VERSION)[0]


@pytest.mark.parametrize("environ, torch_cuda, toolkit, version, expected", [
    ({}, "13.0", "/cuda", (13, 0), (True, "")),
    ({"FASTDW_BUILD_CUDA": "auto"}, "13.0", "/cuda", (13, 1), (True, "")),
    ({"FASTDW_BUILD_CUDA": "1"}, "13.0", "/cuda", (13, 0), (True, "")),
    ({"FASTDW_BUILD_CUDA": "0"}, "13.0", "/cuda", (13, 0), (False, "FASTDW_BUILD_CUDA=0")),
    ({}, "13.0", None, None, (False, "nvcc (the CUDA toolkit) was not found: set CUDA_HOME or "
                                     "put nvcc on PATH")),
    ({}, None, "/cuda", (13, 0), (False, "torch is a build without CUDA (torch.version.cuda is "
                                         "None)")),
    ({}, "12.8", "/cuda", (13, 0), (False, "nvcc in /cuda is CUDA 13.0 but torch is built with "
                                           "CUDA 12.8 (the major versions must match)")),
])
def test_build_decision(environ, torch_cuda, toolkit, version, expected):
    assert cpp_build.cuda_build_decision(environ, torch_cuda, toolkit, version) == expected


@pytest.mark.parametrize("torch_cuda, toolkit, missing", [
    ("13.0", None, "nvcc"), (None, "/cuda", "torch is a build without CUDA")])
def test_build_required_fails_naming_what_is_missing(torch_cuda, toolkit, missing):
    with pytest.raises(RuntimeError, match=f"FASTDW_BUILD_CUDA=1 but {missing}"):
        cpp_build.cuda_build_decision({"FASTDW_BUILD_CUDA": "1"}, torch_cuda, toolkit, None)
    with pytest.raises(RuntimeError, match="FASTDW_BUILD_CUDA must be auto, 0 or 1, got 'yes'"):
        cpp_build.cuda_build_decision({"FASTDW_BUILD_CUDA": "yes"}, torch_cuda, toolkit, None)


def test_arch_names():
    assert cpp_build.cuda_archs({}) == "8.0;9.0"
    assert cpp_build.cuda_arch_names("8.0;9.0") == "sm_80,sm_90"
    assert cpp_build.cuda_arch_names("8.6 9.0+PTX") == "sm_86,sm_90,compute_90"


# setup.py's build_ext with its extensions dropped: the decision and the skip note, no compile.
RUN_SETUP = """
import os, sys, setuptools
real_setup = setuptools.setup
def compile_nothing(**kwargs):
    return real_setup(**dict(kwargs, ext_modules=[]))
setuptools.setup = compile_nothing
sys.argv = ["setup.py", "build_ext", "--build-lib", sys.argv[1], "--build-temp", sys.argv[2]]
exec(compile(open("setup.py").read(), "setup.py", "exec"),
     {"__name__": "__main__", "__file__": os.path.abspath("setup.py")})
"""


def run_setup(tmp_path, **environ):
    env = {k: v for k, v in os.environ.items() if k not in ("FASTDW_BUILD_CUDA", "CUDA_HOME")}
    return subprocess.run([sys.executable, "-c", RUN_SETUP, str(tmp_path / "lib"),
                           str(tmp_path / "temp")], cwd=ROOT, env=dict(env, **environ),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("environ, reason", [
    ({"FASTDW_BUILD_CUDA": "0"}, "FASTDW_BUILD_CUDA=0"),
    ({"CUDA_HOME": "/no/cuda/here"}, "nvcc (the CUDA toolkit) was not found"),
])
def test_setup_records_why_it_skips(tmp_path, environ, reason):
    """A skipped build leaves its reason where the extension would be, and the backend reports
    it as the reason it is unavailable."""
    done = run_setup(tmp_path, **environ)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    package = tmp_path / "lib" / "fastdw" / "kernels"
    assert reason in (package / cpp_build.CUDA_SKIP_NOTE).read_text()
    assert f"setup.py skipped it because {reason}" in cuda.not_built_reason(str(package))


def test_setup_fails_clearly_when_cuda_is_required_but_missing(tmp_path):
    done = run_setup(tmp_path, FASTDW_BUILD_CUDA="1", CUDA_HOME="/no/cuda/here")
    assert done.returncode != 0
    assert "FASTDW_BUILD_CUDA=1 but nvcc (the CUDA toolkit) was not found" in done.stderr


def test_not_built_without_a_note_says_how_to_build(tmp_path):
    assert "pip install --no-build-isolation -e ." in cuda.not_built_reason(str(tmp_path))


def backends_of(op, *args):
    """The dispatch keys `op` has kernels for, as the dispatcher lists them when it has none
    for the arguments' device."""
    with pytest.raises(NotImplementedError) as caught:
        op(*args)
    return re.search(r"only available for these backends: \[([^\]]*)\]",
                     str(caught.value)).group(1).split(", ")


@pytest.mark.skipif(not EXPECT_BUILT, reason="setup.py does not build the CUDA extension here "
                    "(needs a CUDA build of torch and nvcc, and FASTDW_BUILD_CUDA not 0)")
def test_extension_is_built_importable_and_registered_for_cuda():
    """Built by the install, importable with no GPU or driver, its op registered for CUDA
    tensors (the dispatcher refuses CPU ones), compiled for the architectures asked for."""
    from fastdw.kernels import _C_cuda  # noqa: F401
    assert torch.ops.fastdw_cuda.archs() == cpp_build.cuda_arch_names(
        cpp_build.cuda_archs(os.environ))
    x = torch.randn(1, 4, 5, 5).to(memory_format=torch.channels_last)
    block = [None, None, None, torch.randn(4, 1, 3, 3), torch.rand(4), torch.rand(4),
             torch.randn(3, 4), torch.rand(3), torch.rand(3), None, None, None, None]
    calls = {"dwconv_bn_act": (x, torch.randn(4, 1, 3, 3), torch.rand(4), torch.rand(4), 1, 1,
                               1, "relu"),
             "pwconv_bn_act": (x, torch.randn(3, 4), torch.rand(3), torch.rand(3), "relu", None),
             "inverted_residual": (x, block, 1, "relu", False, "relu", "hardsigmoid"),
             "dwconv_bn_act_backward": (torch.randn(1, 4, 5, 5), x, torch.randn(4, 1, 3, 3),
                                        torch.rand(4), torch.rand(4), 1, 1, 1, "relu")}
    for name, args in calls.items():
        keys = backends_of(getattr(torch.ops.fastdw_cuda, name), *args)
        assert "CUDA" in keys and "CPU" not in keys, (name, keys)


def test_info_says_whether_the_extension_is_built_and_why_not():
    env = {k: v for k, v in os.environ.items() if k != cuda.EMULATE_SWITCH}
    out = subprocess.run([sys.executable, "-m", "fastdw", "info"], capture_output=True,
                         text=True, env=env, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("cuda "))
    if EXPECT_BUILT:
        archs = cpp_build.cuda_arch_names(cpp_build.cuda_archs(os.environ))
        assert f"the CUDA extension fastdw.kernels._C_cuda is built for {archs}" in line, line
    else:
        assert "the CUDA extension fastdw.kernels._C_cuda is not built" in line \
            or "was not built: setup.py skipped it because" in line, line
    if not torch.cuda.is_available():
        assert "there is no GPU" in line or "not built" in line, line
        assert "FASTDW_CUDA_EMULATE=1 runs its kernels on CPU tensors" in line, line


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.usefixtures("poisoned_outputs")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernels_on_the_gpu(dtype):
    """Every instantiation the launchers pick, and the generic paths, on the GPU, against the
    float64 oracle (tests/ops/op_oracle.py) with outputs poisoned."""
    import numerics
    import op_oracle as oracle
    from fastdw import ops
    group = 16 // torch.empty((), dtype=dtype).element_size()
    for channels in (2 * group, group + 3):
        for k, stride, dilation in [(3, 1, 1), (3, 2, 1), (5, 1, 1), (5, 2, 1), (7, 1, 1),
                                    (7, 2, 1), (3, 1, 2), (4, 3, 1)]:
            x = oracle.feature_map((2, channels, 9, 11), dtype, "channels_last")
            weight = oracle.conv_weight((channels, 1, k, k), dtype)
            scale, shift = oracle.random_affine(channels)
            args = dict(stride=stride, padding=dilation * (k - 1) // 2, dilation=dilation,
                        act="relu6")
            with torch.no_grad():
                y = ops.dwconv_bn_act(x.cuda(), weight.cuda(), scale.cuda(), shift.cuda(),
                                      backend="cuda", **args)
            ref = oracle.dwconv_bn_act(x, weight, scale, shift, *args.values())
            err = numerics.rel_err(y.cpu(), ref)
            assert err < numerics.REL_TOL[dtype], (dtype, channels, k, stride, dilation, err)
    for c_in, c_out in ((24, 40), (72, 72), (13, 40)):  # tensor cores, three chunks, FFMA
        x = oracle.feature_map((2, c_in, 5, 7), dtype, "channels_last")
        weight = oracle.conv_weight((c_out, c_in, 1, 1), dtype)
        scale, shift = oracle.random_affine(c_out)
        residual = oracle.feature_map((2, c_out, 5, 7), dtype, "channels_last")
        with torch.no_grad():
            y = ops.pwconv_bn_act(x.cuda(), weight.cuda(), scale.cuda(), shift.cuda(),
                                  act="hardswish", residual=residual.cuda(), backend="cuda")
        ref = oracle.pwconv_bn_act(x, weight, scale, shift, "hardswish", residual)
        err = numerics.rel_err(y.cpu(), ref)
        assert err < numerics.REL_TOL[dtype], (dtype, c_in, c_out, err)
    # inverted_residual: fused (k 3 / 5, stride 1 / 2), with a squeeze-excite, in stages (k 21).
    for k, stride, squeeze in ((3, 1, None), (5, 2, None), (3, 1, 4), (21, 2, None)):
        x = oracle.feature_map((2, 16, 11, 9), dtype, "channels_last")
        expand = (oracle.conv_weight((40, 16, 1, 1), dtype), *oracle.random_affine(40))
        dw = (oracle.conv_weight((40, 1, k, k), dtype), *oracle.random_affine(40))
        project = (oracle.conv_weight((16, 40, 1, 1), dtype), *oracle.random_affine(16))
        se = None if squeeze is None else (
            oracle.conv_weight((squeeze, 40, 1, 1), dtype), torch.randn(squeeze),
            oracle.conv_weight((40, squeeze, 1, 1), dtype), torch.randn(40))
        se_args = {} if se is None else dict(zip(("se_w1", "se_b1", "se_w2", "se_b2"),
                                                 (t.cuda() for t in se)))
        with torch.no_grad():
            y = ops.inverted_residual(x.cuda(), *(t.cuda() for t in expand + dw + project),
                                      stride=stride, act="relu6", residual=True,
                                      backend="cuda", **se_args)
        ref = oracle.inverted_residual(x, expand, dw, project, se, stride, "relu6")
        err = numerics.rel_err(y.cpu(), ref)
        assert err < numerics.REL_TOL[dtype], (dtype, k, stride, squeeze, err)
    # dwconv_bn_act backward: the gradients of x (x's dtype) and of weight, scale, shift (fp32).
    for k, stride, dilation in [(3, 1, 1), (5, 2, 1), (3, 2, 2)]:
        x = oracle.feature_map((2, 40, 9, 11), dtype, "channels_last")
        weight = oracle.conv_weight((40, 1, k, k), dtype)
        scale, shift = oracle.random_affine(40)
        leaves = [t.cuda().requires_grad_() for t in (x, weight, scale, shift)]
        pad = dilation * (k - 1) // 2
        y = ops.dwconv_bn_act(*leaves, stride=stride, padding=pad, dilation=dilation,
                              act="hardswish", backend="cuda")
        grad = torch.randn(y.shape, dtype=dtype).to(memory_format=torch.channels_last)
        got = torch.autograd.grad(y, leaves, grad.cuda())
        ref_leaves = [t.double().requires_grad_() for t in (x, weight, scale, shift)]
        ref = torch.autograd.grad(oracle.dwconv_bn_act(*ref_leaves, stride, pad, dilation,
                                                       "hardswish"), ref_leaves, grad.double())
        for g, r, bound in zip(got, ref, (dtype, dtype, torch.float32, torch.float32)):
            err = numerics.rel_err(g.cpu(), r)
            assert err < numerics.REL_TOL[bound], (dtype, k, stride, dilation, err)
