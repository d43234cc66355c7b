"""The package's shape: imports flow one way, the generic layers name no method, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from exssnet_nlp import method_names

PACKAGE = Path(__file__).resolve().parents[1] / "exssnet_nlp"
# Code that must work for any registered method without naming one.
GENERIC = ["training/trainer.py", "training/evaluation.py", "checkpoint.py", "cli.py", "methods/loading.py", "hub.py", "export.py"]
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every package module `path` imports, at top level or inside functions (hidden imports count too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("exssnet_nlp")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("exssnet_nlp"):
                target = node.module
            else:
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from . import dense` imports a module
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {t for t in imports_of(path) if t in modules and t != name} for name, path in modules.items()}


def test_no_import_circles():
    edges = graph()
    edges.pop("exssnet_nlp", None)  # the package's __init__ is the public facade: it imports everything
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_imports_flow_one_way():
    """Low layers never import high ones: io/tasks/masks/... < methods < training < cli."""
    layers = [("exssnet_nlp.cli", "exssnet_nlp.__main__"), ("exssnet_nlp.training",), ("exssnet_nlp.methods",)]
    edges = graph()
    edges.pop("exssnet_nlp", None)  # the public facade
    for name, targets in edges.items():
        rank = next((i for i, prefixes in enumerate(layers) if name.startswith(prefixes)), len(layers))
        for target in targets:
            target_rank = next((i for i, prefixes in enumerate(layers) if target.startswith(prefixes)), len(layers))
            assert target_rank >= rank, f"{name} imports {target}, a layer above it"


@pytest.mark.parametrize("relative", GENERIC)
def test_generic_code_names_no_method(relative):
    tree = ast.parse((PACKAGE / relative).read_text())
    names = set(method_names())
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert node.value not in names, f"{relative} names method {node.value!r}"
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            checked = ast.unparse(node.args[1])
            classes = checked.replace(",", " ").replace("(", " ").replace(")", " ").split()
            assert not any(n.endswith("Model") and n != "PreTrainedModel" for n in classes), \
                f"{relative} checks a model class: isinstance(..., {checked})"


def test_modules_stay_small():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    big = {k: v for k, v in sizes.items() if v > MAX_LINES}
    assert not big, big
