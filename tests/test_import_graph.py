"""The house has no import circles, and arrows point down (DESIGN.md, "The house").

The graph is read from the source with ``ast``: every ``import``/``from ... import`` of a lumos
module, also those inside functions (a lazy import is still an arrow: ``metrics/comparison.py``
importing the command line that imports ``compare`` was a circle although both imports were lazy).
An arrow goes to the module named, not to the packages above it (importing ``lumos.core.io`` runs
``lumos/core/__init__.py`` too, but a package importing its own modules is not a circle).
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import lumos

SRC = Path(lumos.__file__).resolve().parent


def module_files(root: Path) -> dict[str, tuple[Path, bool]]:
    """``dotted name -> (file, is_package)`` for every .py file under the package folder ``root``."""
    out = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (p, is_pkg)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """``module -> modules of the same package tree it imports`` (lazy imports included)."""
    mods = module_files(root)
    top = root.name
    graph = {}
    for mod, (path, is_pkg) in mods.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for a in node.names:  # `from pkg import submodule` imports the submodule
                    sub = f"{target}.{a.name}"
                    targets.add(sub if sub in mods else target)
        graph[mod] = {t for t in targets if t in mods and t != mod and t.split(".")[0] == top}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start), on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w), on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _describe(graph, comp) -> str:
    """One shortest circle through the component's first module: ``a -> b -> a``."""
    from collections import deque

    start, inside = comp[0], set(comp)
    came = {start: None}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v] & inside):
            if w == start:
                path = [v]
                while came[path[-1]] is not None:
                    path.append(came[path[-1]])
                return " -> ".join([start] + path[::-1][1:] + [start]) if len(path) > 1 else f"{start} -> {v} -> {start}"
            if w not in came:
                came[w] = v
                queue.append(w)
    return ", ".join(comp)


def test_the_checker_finds_a_circle_and_a_lazy_one(tmp_path):
    """The graph and cycle finder can fail: a package with a lazy circle and a plain one."""
    pkg = tmp_path / "pkgx"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .sub.b import g\n    return g\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\n\ndef g():\n    pass\n")
    (pkg / "c.py").write_text("import pkgx.d\n")
    (pkg / "d.py").write_text("from pkgx import c\n")
    (pkg / "e.py").write_text("from . import a\nimport os\n")
    graph = import_graph(pkg)
    assert graph["pkgx"] == {"pkgx.a"} and graph["pkgx.e"] == {"pkgx.a"}
    assert sorted(cycles(graph)) == [["pkgx.a", "pkgx.sub.b"], ["pkgx.c", "pkgx.d"]]
    assert _describe(graph, ["pkgx.a", "pkgx.sub.b"]) == "pkgx.a -> pkgx.sub.b -> pkgx.a"


def test_no_import_cycle_between_lumos_modules():
    graph = import_graph(SRC)
    assert len(graph) > 50  # the whole package was read
    found = cycles(graph)
    assert not found, "import circles: " + " | ".join(_describe(graph, c) for c in found)


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_arrows_point_down():
    """core imports only core (and display, through which an Explanation plots); rules only core and
    rules; nothing below imports the command line or the reports."""
    graph = import_graph(SRC)
    wrong = []
    for mod, targets in graph.items():
        layer = _layer(mod)
        for t in targets:
            tl = _layer(t)
            if layer == "core" and tl not in ("core", "display"):
                wrong.append(f"{mod} -> {t} (core imports only core)")
            elif layer == "rules" and tl not in ("core", "rules"):
                wrong.append(f"{mod} -> {t} (rules import only core and rules)")
            elif tl == "cli" and layer not in ("cli", "__main__"):
                wrong.append(f"{mod} -> {t} (only the command line and __main__ import lumos.cli)")
            elif tl == "report" and layer not in ("cli", "report"):
                wrong.append(f"{mod} -> {t} (only the command line imports the reports)")
    assert not wrong, "\n".join(sorted(wrong))


def test_every_lumos_module_imports():
    names = [m.name for m in pkgutil.walk_packages(lumos.__path__, "lumos.")]
    assert "lumos.core.io" in names and "lumos.cli.explain" in names and "lumos.__main__" in names
    failed = {}
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            if err.name and not err.name.startswith("lumos"):
                continue  # an optional third-party dependency that is not installed
            failed[name] = f"{type(err).__name__}: {err}"
        except Exception as err:  # noqa: BLE001 - every failure is reported
            failed[name] = f"{type(err).__name__}: {err}"
    assert not failed, failed


@pytest.mark.parametrize("module", ["lumos.cli", "lumos.core.io"])
def test_command_line_modules_load_without_torch(module):
    """The parser and the path checks import neither torch nor any method (checked in a fresh process)."""
    import subprocess
    import sys

    code = (f"import sys, {module}; heavy = [m for m in ('torch', 'matplotlib', 'sklearn') if m in sys.modules];"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_no_exported_name_shadows_a_submodule():
    """`import lumos.pkg.mod as m` reads the attribute `mod` of the package: when the package
    exports a function of the same name (`from .tcav import tcav`), `m` is the function, not the
    module. Every package of lumos keeps its submodules reachable under their own names."""
    import types

    clashes = []
    for info in pkgutil.walk_packages(lumos.__path__, "lumos."):
        if not info.ispkg:
            continue
        try:
            package = importlib.import_module(info.name)
        except ImportError:  # an optional extra is missing: nothing of it is exported either
            continue
        for sub in pkgutil.iter_modules(package.__path__):
            value = getattr(package, sub.name, None)
            if value is not None and not isinstance(value, types.ModuleType):
                clashes.append(f"{info.name}.{sub.name} is {type(value).__name__} {value!r}")
    value = getattr(lumos, "explain")
    assert callable(value)
    assert not clashes, "exported names shadow submodules:\n" + "\n".join(clashes)
