"""The type stubs of quantdrift._core name exactly what the module exports,
with the same parameter names."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import quantdrift
from quantdrift import _core

STUB = Path(quantdrift.__file__).with_name("_core.pyi")


def stub_functions():
    tree = ast.parse(STUB.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            args = node.args
            out[node.name] = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    return out


def test_every_export_has_a_stub_and_every_stub_an_export():
    exported = {n for n, v in vars(_core).items() if callable(v) and not n.startswith("_")}
    assert exported == set(stub_functions())


def test_stub_parameters_match_the_extension():
    for name, params in stub_functions().items():
        signature = inspect.signature(getattr(_core, name))
        assert list(signature.parameters) == params, name
