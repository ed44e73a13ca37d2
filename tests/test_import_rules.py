"""The house rules of the import graph, read from the source with `ast` (nothing is imported):

* the engine (`lib_training/` outside `webui/`) imports nothing from `webui`, gradio or A1111's `modules`;
* `webui/backend` imports no tab package (`webui/train`, `webui/dataset`, `webui/compare`) and no
  top-level UI module (`api`, `ui_tab`, `settings`);
* no import cycles inside `lib_training` — lazy imports inside functions count too, since a cycle
  hidden in a function is still two modules that each need the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lib_training"
WEBUI = "lib_training.webui"
TABS = tuple(f"{WEBUI}.{tab}" for tab in ("train", "dataset", "compare"))
TOP_UI = tuple(f"{WEBUI}.{name}" for name in ("api", "ui_tab", "settings"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module `name` imports, anywhere in the file, as absolute dotted names.
    `from pkg import x` counts as importing `pkg.x` when that is a module, else `pkg`."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return found


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def inside(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_graph_sees_the_packages_it_checks():
    g = graph()
    assert {f"{WEBUI}.backend.bridge", f"{WEBUI}.train.ui", f"{WEBUI}.dataset.class_images",
            f"{WEBUI}.compare.generator", "lib_training.train.loop"} <= set(g)
    # sanity: the walker resolves relative imports (bridge imports the engine's loop)
    assert "lib_training.train.loop" in g[f"{WEBUI}.backend.bridge"]


def test_engine_imports_nothing_of_the_webui_gradio_or_a1111():
    offenders = [(mod, imp) for mod, imps in graph().items() if not inside(mod, [WEBUI])
                 for imp in imps if inside(imp, [WEBUI, "gradio", "modules"])]
    assert offenders == []


def test_backend_imports_no_tab():
    offenders = [(mod, imp) for mod, imps in graph().items() if inside(mod, [f"{WEBUI}.backend"])
                 for imp in imps if inside(imp, TABS + TOP_UI)]
    assert offenders == []


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in g:
        if start in index:
            continue
        work = [(start, iter(sorted(g[start] & g.keys())))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g[child] & g.keys()))))
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
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_lib_training():
    g = graph()
    # a package's __init__ that imports its own submodules is not a cycle with them
    g = {mod: {imp for imp in imps if not mod.startswith(imp + ".")} for mod, imps in g.items()}
    assert cycles(g) == []
