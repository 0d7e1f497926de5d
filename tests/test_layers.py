"""The package's layer rule: a module imports only from its own layer or below, and no import circle.

Layers, bottom to top (README, Layout). Every import is counted, module-level or inside a function: a lazy
import upward is still a dependency upward. The registries (dtrl.config.registry's "module:Class" strings)
load a plugin with importlib at run time, which is how a lower layer names a method without importing it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    ("dtrl.util", "dtrl.reference", "dtrl"),
    ("dtrl.tasks",),
    ("dtrl.config",),
    ("dtrl.envs", "dtrl.data"),
    ("dtrl.models",),
    ("dtrl.harness",),
    ("dtrl.methods", "baselines"),
    ("dtrl.workflow", "dtrl.report"),
    ("dtrl.cli",),
]


def layer_of(module: str) -> int:
    """Index of the layer whose longest package prefix matches ``module`` (``dtrl`` alone = the root)."""
    best, best_len = None, -1
    for i, pkgs in enumerate(LAYERS):
        for p in pkgs:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                if p == "dtrl" and module != "dtrl":
                    continue  # the root matches only itself (its __init__: the version)
                best, best_len = i, len(p)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and README's Layout"
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    files = list((ROOT / "dtrl").rglob("*.py")) + list((ROOT / "baselines").rglob("*.py"))
    return {module_name(f): f for f in files}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules that ``path`` imports (``from pkg import mod`` resolves to the module when it is one)."""
    out: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import dtrl.tasks.registry` counts as that module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    known = set(mods)
    return {m: imports_of(p, m, known) for m, p in mods.items()}


def test_every_module_is_in_a_layer():
    for m in project_modules():
        layer_of(m)


def test_no_upward_import():
    upward = [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
              for m, deps in import_graph().items() for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert not upward, "imports upward between layers:\n" + "\n".join(upward)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_circle():
    # A package's __init__ importing its own submodules is how packages work; a circle through one is still a
    # circle between modules, so nothing is exempt.
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_an_upward_import_and_a_circle(tmp_path):
    """The rule's own check: a lower module importing a higher one is found, and so is a circle."""
    known = {"dtrl.util.io", "dtrl.cli", "dtrl.tasks.registry"}
    f = tmp_path / "io.py"
    f.write_text("def f():\n    from dtrl.cli import main\n")
    deps = imports_of(f, "dtrl.util.io", known)
    assert deps == {"dtrl.cli"} and layer_of("dtrl.cli") > layer_of("dtrl.util.io")
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
