"""The package's layering, checked: imports read one way (models -> nn -> ops -> backend ->
kernels), no package imports another's private module, one Python module names the C++ ops,
and an inverted-residual block's tensors are spelled out once in Python and once in C++."""
import ast
import inspect
import pathlib
import subprocess
import sys

import pytest

import fastdw.backend
from fastdw.contract import BlockWeights
from fastdw.ops import inverted_residual

PACKAGE = pathlib.Path(fastdw.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path):
    """(imported module, imported name or None) for every import statement in path."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield from ((node.module, alias.name) for alias in node.names)


def private_owner(dotted):
    """The package that owns a private name in a dotted path (fastdw.ops for
    fastdw.ops._outputs), or None when nothing in it is private."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


# The compiled extension fastdw._C belongs to the cpp backend, its only importer.
ALLOWED = {("fastdw.kernels.cpp", "fastdw._C")}


def test_no_package_imports_another_packages_private_module_or_name():
    bad = []
    for path in SOURCES:
        importer = module_name(path)
        package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
        for module, name in imported(path):
            if not module.startswith("fastdw"):
                continue
            target = module if name is None else f"{module}.{name}"
            owner = private_owner(target)
            if owner is not None and owner != package and (importer, target) not in ALLOWED:
                bad.append(f"{importer} imports {target}")
    assert not bad, bad


def test_import_fastdw_nn_loads_nothing_of_fastdw_models():
    code = ("import sys, fastdw.nn; "
            "print(sorted(m for m in sys.modules if m.startswith('fastdw.models')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


LAYERS = ["fastdw.models", "fastdw.nn", "fastdw.ops", "fastdw.backend", "fastdw.kernels"]


def test_imports_only_go_down_the_layers():
    def layer(name):
        return next((i for i, top in enumerate(LAYERS)
                     if name == top or name.startswith(top + ".")), None)

    bad = []
    for path in SOURCES:
        importer = module_name(path)
        own = layer(importer)
        for module, _ in imported(path):
            other = layer(module)
            if None not in (own, other) and other < own:
                bad.append(f"{importer} imports {module}")
    assert not bad, bad


def test_only_the_cpp_backend_names_the_cpp_ops():
    naming = [str(p.relative_to(PACKAGE)) for p in SOURCES if "fastdw_cpp" in p.read_text()]
    assert naming == ["kernels/cpp.py"]


def test_backends_listed_exist():
    for name, module in fastdw.backend.BACKEND_MODULES.items():
        assert (PACKAGE.parent / (module.replace(".", "/") + ".py")).exists() \
            or (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists(), name


def test_public_inverted_residual_takes_the_block_tensors_by_their_field_names():
    options = {"x", "stride", "act", "residual", "se_act", "se_gate", "backend"}
    names = [n for n in inspect.signature(inverted_residual).parameters if n not in options]
    assert names == list(BlockWeights._fields)


@pytest.mark.skipif("cpp" not in fastdw.backend.usable("cpu"),
                    reason="needs fastdw._C (the cpp backend), which is not built")
def test_cpp_block_weights_are_in_the_python_order():
    from fastdw.kernels import cpp
    assert cpp.block_weight_names() == list(BlockWeights._fields)
