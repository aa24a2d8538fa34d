"""The shape of the core: packages follow the data flow, say what they hold, and keep their privates.

The import layers themselves are checked by import-linter (``lint-imports``, contracts in
pyproject.toml, run by .ci/run before these tests); these tests check what it cannot: private
names, module-level imports of heavy libraries, package docstrings and the README's package map.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "HealthiVertLib"
PACKAGES = sorted(p.parent.relative_to(LIB).as_posix() for p in LIB.rglob("__init__.py") if p.parent != LIB)
# where a library may be imported at module level (everywhere else only inside functions)
MODULE_LEVEL_HOMES = {
    "matplotlib": ("outputs/",),
    "torch": ("engines/generator/", "training/"),
    "safetensors": ("engines/generator/", "training/"),
    "sklearn": (),
    "slicer": ("scene/",),
    "vtk": ("scene/",),
    "pydicom": (),
    "highdicom": (),
}


def _python_files() -> list[Path]:
    places = [LIB, ROOT / "Testing" / "Python", ROOT / "scripts", ROOT / "benchmarks", ROOT / "HealthiVert"]
    return sorted(p for place in places for p in place.rglob("*.py"))


def _top_level_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """Imports executed when the module is imported (module body, also inside top-level if/try)."""
    found = []
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
        elif isinstance(node, (ast.If, ast.Try)):
            stack += node.body + node.orelse + getattr(node, "finalbody", []) + [
                n for h in getattr(node, "handlers", []) for n in h.body
            ]
    return found


def test_no_module_imports_another_modules_private_names():
    offending = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    offending.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {private}")
    assert not offending, "make the name public or keep its use inside its module: " + "; ".join(offending)


def test_heavy_libraries_are_imported_at_module_level_only_where_they_belong():
    offending = []
    for path in sorted(LIB.rglob("*.py")):
        rel = path.relative_to(LIB).as_posix()
        for name, line in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            top = name.split(".")[0]
            if top in MODULE_LEVEL_HOMES and not rel.startswith(MODULE_LEVEL_HOMES[top]):
                offending.append(f"HealthiVertLib/{rel}:{line} imports {name}")
    assert not offending, "import it inside the function that needs it: " + "; ".join(offending)


def test_every_package_says_what_it_holds():
    for package in PACKAGES:
        doc = ast.get_docstring(ast.parse((LIB / package / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc.split()) >= 25, f"HealthiVertLib/{package}/__init__.py needs a one-paragraph docstring"


def test_every_module_has_a_docstring():
    missing = [p.relative_to(ROOT).as_posix() for p in sorted(LIB.rglob("*.py"))
               if not ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))]
    assert not missing, f"modules without a docstring: {missing}"


def test_readme_package_map_matches_the_tree():
    """The README's "How it works" map names every package and module, and nothing that is gone."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## How it works"):]
    section = section[: section.index("\n## ", 3)]
    modules = {p.relative_to(LIB).with_suffix("").as_posix() for p in LIB.rglob("*.py") if p.name != "__init__.py"}
    named = set(re.findall(r"`([a-z_]+(?:/[a-z_]+)*)(?:\.py|/)`", section))
    missing = sorted(m for m in modules | set(PACKAGES) if m not in named and m.rsplit("/", 1)[-1] not in named)
    assert not missing, f"README 'How it works' does not name: {missing}"
    tops = {m.split("/")[0] for m in modules | set(PACKAGES)}
    stale = sorted(n for n in named if "/" in n and n.split("/")[0] in tops and n not in modules | set(PACKAGES))
    assert not stale, f"README 'How it works' names what is not in the tree: {stale}"


def _text_io_without_encoding(tree: ast.Module) -> list[int]:
    """Lines that read or write text without naming the encoding (``read_text()``, ``open(p)``, ``open(p, "w")``)."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("read_text", "write_text"):
            lines.append(node.lineno)
        elif name == "open" and not (isinstance(func, ast.Attribute) and func.attr == "open" and
                                     not (isinstance(func.value, ast.Name) and func.value.id in ("io", "builtins"))):
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            if not (isinstance(mode, ast.Constant) and "b" in str(mode.value)):
                lines.append(node.lineno)
    return lines


def test_text_files_are_read_and_written_as_utf8():
    """Reports, tables and READMEs hold non-ASCII text (—, ³, ≥); without an explicit encoding Python uses
    the locale's, which is ASCII on a bare machine or a service without LANG, and every read fails there."""
    offending = [f"{path.relative_to(ROOT)}:{line}" for path in _python_files()
                 for line in _text_io_without_encoding(ast.parse(path.read_text(encoding="utf-8")))]
    assert not offending, "pass encoding=\"utf-8\": " + ", ".join(offending)
