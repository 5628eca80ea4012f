"""The shape of the house, read from the source with ``ast``: no import circles anywhere in
the repository (``ugr_kernels`` included: issue 16), and the layers of ``train`` import
one way only.

Every import statement counts, at module level or inside a function: a lazy import that
closes a circle is still a circle.
"""
import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", "build", "dist", "__pycache__", ".eggs", "node_modules"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).parts
        if any(p in SKIP_DIRS or p.startswith(".") or p.endswith(".egg-info") for p in rel):
            continue
        out[_module_name(path)] = path
    return out


MODULES = _sources()
# Compiled extensions (ugr_kernels._C when built, or named by an import when not): modules
# without Python imports of their own.
EXTENSIONS = {"ugr_kernels._C"}


def _imports(name: str, path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    """``(imported module, names taken from it, line)`` for every import of the file."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found.append((base, tuple(a.name for a in node.names), node.lineno))
    return found


def _targets(module: str, names: tuple[str, ...]) -> set[str]:
    """The repository modules an import runs: ``from pkg import sub`` runs ``pkg.sub`` when
    that is a module, else ``pkg`` itself; ``import a.b.c`` runs the longest known prefix."""
    out = set()
    for n in names:
        if f"{module}.{n}" in MODULES or f"{module}.{n}" in EXTENSIONS:
            out.add(f"{module}.{n}")
        elif module in MODULES:
            out.add(module)
    if not names:
        parts = module.split(".")
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in MODULES:
                out.add(".".join(parts[:k]))
                break
    return out


def _graph() -> dict[str, set[str]]:
    graph = defaultdict(set)
    for name, path in MODULES.items():
        for module, names, _ in _imports(name, path):
            graph[name] |= _targets(module, names) - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    nodes = set(graph) | {t for targets in graph.values() for t in targets}
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_scan_sees_the_repository():
    assert {"train.run.trainer", "train.data.loader", "ugr_kernels.api", "model"} <= set(MODULES)
    graph = _graph()
    assert "train.run_folder" in graph["train.run.trainer"]
    assert "train.evaluation.tables" in graph["train.evaluation.report"]   # relative imports


def test_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "d": {"a"}}) == []


def test_every_first_party_import_names_a_module_of_the_repository():
    """A moved module leaves no import behind (an editable install of another checkout
    would otherwise answer it and hide the mistake)."""
    first_party = {"train", "model", "ugr_kernels"}
    bad = [f"{path.relative_to(ROOT)}:{line} imports {module}"
           for name, path in MODULES.items()
           for module, _, line in _imports(name, path)
           if module.split(".")[0] in first_party and module not in MODULES
           and module not in EXTENSIONS]
    assert bad == []


def test_the_old_ugr_kernels_circle_would_be_found():
    graph = _graph()
    assert "ugr_kernels.pit" in graph["ugr_kernels.epilogue"]
    assert "ugr_kernels.fused" in graph["ugr_kernels.api"]
    graph["ugr_kernels.pit"].add("ugr_kernels.api")   # a helper reaching up into api again
    assert any({"ugr_kernels.api", "ugr_kernels.pit"} <= set(c) for c in _cycles(graph))


def test_pit_checks_and_the_registry_import_nothing_of_the_package():
    graph = _graph()
    for leaf in ("ugr_kernels.pit", "ugr_kernels.checks", "ugr_kernels.backends"):
        assert {t for t in graph[leaf] if t.startswith("ugr_kernels")} == set(), leaf


def test_no_import_circles_anywhere_in_the_repository():
    assert _cycles(_graph()) == []


# Which layers of ``train`` each layer may import (its own included); see train/__init__.py.
LAYERS = {
    "train.data": {"train.data"},
    "train.run_folder": {"train.run_folder"},
    "train.evaluation": {"train.evaluation", "train.data", "train.run_folder"},
    "train.run": {"train.run", "train.data", "train.evaluation", "train.run_folder"},
    "train.commands": {"train.commands", "train.run", "train.data", "train.evaluation",
                       "train.run_folder"},
}


def _layer(module: str):
    for layer in sorted(LAYERS, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_train_layers_import_one_way(layer):
    bad = []
    for name, path in MODULES.items():
        if _layer(name) != layer:
            continue
        for module, names, line in _imports(name, path):
            for target in _targets(module, names):
                to = _layer(target)
                if target.startswith("train") and target != "train" and to not in LAYERS[layer]:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert bad == []


def test_only_the_entry_points_and_tests_import_the_command_lines():
    entry = {"train.__main__", "train.evaluate", "train.separate", "train.report",
             "train.reproduce"}
    bad = [f"{name} imports {target}" for name, targets in _graph().items()
           for target in targets if _layer(target) == "train.commands"
           and _layer(name) != "train.commands" and name not in entry
           and not name.startswith(("tests.", "bench."))]
    assert bad == []


def test_model_and_ugr_kernels_never_import_train():
    bad = [f"{name} imports {target}" for name, targets in _graph().items()
           if name.startswith(("model", "ugr_kernels")) for target in targets
           if target.split(".")[0] == "train"]
    assert bad == []


def test_train_uses_only_public_ugr_kernels_names():
    import ugr_kernels

    public = set(ugr_kernels.__all__)
    bad = []
    for name, path in MODULES.items():
        rel = str(path.relative_to(ROOT))
        if not name.startswith("train"):
            continue
        for module, names, line in _imports(name, path):
            if module == "ugr_kernels" and names:
                bad += [f"{rel}:{line} {n}" for n in names if n not in public]
            elif module.startswith("ugr_kernels."):
                bad.append(f"{rel}:{line} imports {module}")
    assert bad == []
