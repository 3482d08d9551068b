"""The keyword arguments the Python driver passes to xtf_kernels._C match the binding's, checked from the
sources on a machine without nvcc or a GPU.

The extension takes raw pointers by keyword (csrc/bindings.cpp, ``py::kw_only()``), so a name added on one
side and not the other fails only at the first launch, i.e. only on a GPU. Here the ``py::arg`` names of
each binding are read from bindings.cpp and compared with the keywords of every ``module.<binding>(...)``
call in xtf_kernels/ops/_cuda (``**name`` expanded through the ``name = dict(...)`` it comes from).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BINDINGS = ROOT / "csrc" / "bindings.cpp"
DRIVERS = sorted((ROOT / "xtf_kernels" / "ops" / "_cuda").glob("*.py"))
LAUNCHERS = ("row_stats", "row_finalize", "row_delta")  # row_copy.py's launches go through one helper


def _binding_arguments() -> dict[str, set[str]]:
    """{binding name: its py::arg names} from the m.def(...) calls of bindings.cpp."""
    source = BINDINGS.read_text(encoding="utf-8")
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'm\.def\(\s*"(\w+)"', source)]
    arguments = {}
    for (start, name), (stop, _) in zip(starts, [*starts[1:], (len(source), "")]):
        arguments[name] = set(re.findall(r'py::arg\("(\w+)"\)', source[start:stop]))
    return arguments


def _driver_calls() -> list[tuple[str, str, set[str]]]:
    """(file, binding, keyword names) of every ``<name>.<binding>(...)`` call in the driver sources."""
    calls = []
    for path in DRIVERS:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        dicts = {}  # name = dict(key=...) -> keys (any scope: the drivers do not reuse these names)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "dict"):
                dicts[node.targets[0].id] = {k.arg for k in node.value.keywords if k.arg is not None}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LAUNCHERS and isinstance(node.func.value, ast.Name)):
                names = set()
                for keyword in node.keywords:
                    if keyword.arg is not None:
                        names.add(keyword.arg)
                    else:
                        names |= dicts[keyword.value.id]
                calls.append((path.name, node.func.attr, names))
    return calls


def test_every_launch_passes_exactly_the_binding_arguments():
    bindings = _binding_arguments()
    calls = _driver_calls()
    assert {binding for _, binding, _ in calls} == set(LAUNCHERS)
    for file, binding, names in calls:
        assert names == bindings[binding], (
            f"{file}: {binding}(...) passes {sorted(names - bindings[binding])} that the binding lacks and lacks "
            f"{sorted(bindings[binding] - names)}"
        )


@pytest.mark.parametrize("binding", ["row_stats", "row_finalize"])
def test_new_options_reach_the_kernels(binding):
    """Logit scale and class weights are arguments of both row kernels; the argmax of the statistics kernel."""
    wanted = {"logit_scale", "class_weights"} | ({"partial_argmax"} if binding == "row_stats" else set())
    assert wanted <= _binding_arguments()[binding]
