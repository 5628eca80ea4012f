"""The import graph of ugr_kernels has no cycles (issue 16, item 6).

Every ``import`` statement counts, at module level or inside a function: a lazy import
is still an arrow between two modules. Modules looked up by name at run time (the
backend registry's ``importlib.import_module``) are plug-ins, not imports.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ugr_kernels"


def _modules() -> dict:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        out[name] = (path, is_package)
    out["ugr_kernels._C"] = (None, False)        # the compiled extension: imports nothing
    return out


def _imports(name: str, path: Path, is_package: bool, modules: dict) -> set:
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import sub`` imports the submodule; ``from mod import name``, mod.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph() -> dict:
    modules = _modules()
    return {name: _imports(name, path, pkg, modules) if path else set()
            for name, (path, pkg) in modules.items()}


def _cycle(graph: dict):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_is_read():
    graph = _graph()
    assert "ugr_kernels.pit" in graph["ugr_kernels.epilogue"]
    assert "ugr_kernels.fused" in graph["ugr_kernels.api"]
    assert "ugr_kernels.pit" in graph["ugr_kernels.backends.triton.fused"]


def test_no_import_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_pit_and_checks_import_nothing_of_the_package():
    graph = _graph()
    assert graph["ugr_kernels.pit"] == set()
    assert graph["ugr_kernels.checks"] == set()
    assert graph["ugr_kernels.backends"] == set()
