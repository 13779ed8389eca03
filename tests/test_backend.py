"""Backend selection: explicit > use_backend() > set_backend() > FASTDW_BACKEND > auto."""
import os
import subprocess
import sys
import types

import pytest
import torch

import fastdw
from fastdw import backend


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("FASTDW_BACKEND", raising=False)
    yield
    fastdw.set_backend(None)


def test_precedence(monkeypatch):
    monkeypatch.setenv("FASTDW_BACKEND", "reference")
    assert backend.resolve(None, "cpu") == "reference"
    monkeypatch.setenv("FASTDW_BACKEND", "auto")
    auto = backend.resolve(None, "cpu")
    assert auto in backend.AUTO_ORDER["cpu"]
    fastdw.set_backend("reference")
    assert backend.resolve(None, "cpu") == "reference"
    with fastdw.use_backend("auto"):
        assert backend.resolve(None, "cpu") == auto
        with fastdw.use_backend("reference"):
            assert backend.resolve(None, "cpu") == "reference"
            assert backend.resolve("auto", "cpu") == auto  # the call's argument wins
        assert backend.resolve(None, "cpu") == auto
    assert backend.resolve(None, "cpu") == "reference"


def test_auto_takes_the_first_usable_backend_for_the_device():
    usable = backend.usable("cpu")
    first = next(n for n in backend.AUTO_ORDER["cpu"] if n in usable)
    assert backend.resolve("auto", "cpu") == first
    # reference runs on every device, so auto never fails where reference works
    for device in ("cpu", "cuda", "meta", "mps"):
        assert "reference" in backend.usable(device)
    assert backend.resolve("auto", "meta") == "reference"


def test_auto_on_a_device_without_a_fastdw_kernel():
    x = torch.randn(1, 4, 5, 5, device="meta")
    out = fastdw.ops.dwconv_bn_act(x, torch.randn(4, 1, 3, 3, device="meta"), stride=2)
    assert out.shape == (1, 4, 3, 3) and out.device.type == "meta"


def test_use_backend_is_per_thread():
    import threading
    expected = backend.resolve(None, "cpu")
    other = "reference" if expected != "reference" else "cpp"  # either would show if leaked
    inside, done = threading.Event(), threading.Event()

    def holder():
        with fastdw.use_backend(other):
            inside.set()
            done.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    inside.wait(10)
    try:
        assert backend.resolve(None, "cpu") == expected
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize("where", ["argument", "use_backend", "set_backend", "env"])
def test_unknown_backend_is_a_value_error(where, monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'warp'"):
        if where == "argument":
            backend.resolve("warp", "cpu")
        elif where == "use_backend":
            with fastdw.use_backend("warp"):
                pass
        elif where == "set_backend":
            fastdw.set_backend("warp")
        else:
            monkeypatch.setenv("FASTDW_BACKEND", "warp")
            backend.resolve(None, "cpu")


@pytest.fixture
def unbuilt_backend(monkeypatch):
    """A backend "unbuilt" whose module says it cannot run (as cpp does without fastdw._C)."""
    module = types.ModuleType("fastdw_test_unbuilt")
    module.DEVICES = ("cpu",)
    module.unavailable = lambda: "its extension was not built"
    monkeypatch.setitem(sys.modules, "fastdw_test_unbuilt", module)
    monkeypatch.setitem(backend.BACKEND_MODULES, "unbuilt", "fastdw_test_unbuilt")
    monkeypatch.delitem(backend._loaded, "unbuilt", raising=False)
    yield "unbuilt"
    backend._loaded.pop("unbuilt", None)


def test_unusable_backend_requested_explicitly_says_why(unbuilt_backend):
    cannot = [n for n in backend.BACKEND_MODULES if n not in backend.usable("cpu")]
    assert unbuilt_backend in cannot
    for name in cannot:
        with pytest.raises(fastdw.BackendUnavailableError, match=f"backend '{name}' cannot run"):
            fastdw.ops.dwconv_bn_act(torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3),
                                     backend=name)
    assert "its extension was not built" in fastdw.info()[unbuilt_backend]["reason"]


def test_info_reports_every_backend_with_a_reason():
    report = fastdw.info()
    assert set(report) == {"reference", "cpp", "triton", "cuda"}
    for name, row in report.items():
        assert row["usable"] or row["reason"], f"{name} is unusable without a reason"
    assert "reference" in fastdw.format_info()


def test_import_does_not_load_optional_backends():
    code = ("import sys, fastdw; "
            "print(any(m in sys.modules for m in ('triton', 'fastdw._C', 'torchvision')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("case", ["switched off", "no sources"])
def test_cpp_backend_without_its_extension_says_why(case):
    """Where fastdw._C cannot be imported, the cpp backend compiles it on first use
    (fastdw/kernels/cpp_build.py) unless FASTDW_NO_EXTENSION=1 or the C++ sources are not
    installed; either way it is unusable with that reason, and auto runs reference."""
    script = f"""
import sys
sys.modules["fastdw._C"] = None  # as where the extension was not built ahead of time
from fastdw.kernels import cpp_build
if {case!r} == "no sources":
    cpp_build.SOURCE_ROOT = "/nonexistent"
import fastdw
print(fastdw.info()["cpp"]["reason"])
print(fastdw.backend.resolve(None, "cpu"))
"""
    env = dict(os.environ, FASTDW_NO_EXTENSION="1" if case == "switched off" else "0")
    env.pop("FASTDW_BACKEND", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    reason, chosen = done.stdout.strip().splitlines()[-2:]
    assert reason.startswith("fastdw._C was not built"), reason
    assert ("FASTDW_NO_EXTENSION=1" if case == "switched off" else "sources are not installed"
            ) in reason
    assert chosen == "reference"
    assert "compiling" not in done.stderr


@pytest.mark.parametrize("name", [["cpp"], 3, b"cpp"])
def test_a_backend_name_that_is_not_a_str_is_a_type_error(name):
    with pytest.raises(TypeError, match="backend: a backend name must be a str, got"):
        fastdw.ops.dwconv_bn_act(torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3), backend=name)


def test_the_environment_is_read_as_os_environ_holds_it(monkeypatch):
    """Writes through os.environ reach the C library's getenv that resolve() reads; a mapping
    put in os.environ's place (unittest.mock.patch("os.environ", {...})) answers instead."""
    from unittest import mock
    monkeypatch.setenv("FASTDW_BACKEND", "reference")
    assert backend.resolve(None, "cpu") == "reference"
    monkeypatch.delenv("FASTDW_BACKEND")
    auto = backend.resolve(None, "cpu")
    with mock.patch("os.environ", {"FASTDW_BACKEND": "reference"}):
        assert backend.resolve(None, "cpu") == "reference"
    with mock.patch.dict("os.environ", {"FASTDW_BACKEND": "reference"}):
        assert backend.resolve(None, "cpu") == "reference"
    assert backend.resolve(None, "cpu") == auto
