"""Static checks of the Slicer extension, run WITHOUT Slicer (plain pytest, no Qt, no MRML).

* packaging: every .py of HealthiVert/ and HealthiVertLib/ and every file of Resources/ and
  HealthiVertLib/data/ is listed in HealthiVert/CMakeLists.txt, and everything listed exists;
* the .ui parses, its SlicerParameterName properties match the parameter node fields (and suit
  their types), every ``self.ui.<name>`` the module uses is a widget of the .ui;
* CMakeLists.txt, HealthiVert.s4ext and HealthiVert.json agree; icons are 128x128 PNG;
* HealthiVert.py parses as Python 3.12, imports only stdlib/slicer/vtk/qt/ctk/HealthiVertLib at
  file scope, and has the module/parameter node/widget/logic/test classes;
* the core package never imports slicer, qt or vtk, except HealthiVertLib/scene/ (the MRML adapter),
  which may import slicer and vtk, not qt;
* the module's command line (HealthiVertLib.app.background) is accepted by HealthiVertLib.app.cli, every
  core function the module calls exists, the torch dependency and the sample checksums are right.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = "HealthiVert"
MODULE_DIR = ROOT / MODULE
LIB = "HealthiVertLib"
LIB_DIR = ROOT / LIB
MODULE_PY = MODULE_DIR / f"{MODULE}.py"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
TOP_CMAKE = ROOT / "CMakeLists.txt"
UI_FILE = ROOT / "Resources" / "UI" / f"{MODULE}.ui"
S4EXT = ROOT / f"{MODULE}.s4ext"
CATALOG_JSON = ROOT / f"{MODULE}.json"
ICONS = (ROOT / f"{MODULE}.png", ROOT / "Resources" / "Icons" / f"{MODULE}.png")

SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json"
SCHEMA_PROPERTIES = {  # slicer-extension-catalog-entry-schema-v1.0.2.json, additionalProperties: false
    "$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
    "dicom_support_rule", "build_subdirectory", "enabled", "tier",
}  # fmt: skip
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
FITTING_CATEGORIES = {"Quantification", "Segmentation", "Image Synthesis", "Analysis"}
EXTENSION_VARIABLES = (
    "EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
    "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS",
)  # fmt: skip
RAW_URL = re.compile(r"^https://raw\.githubusercontent\.com/(?P<org>[^/]+)/(?P<repo>[^/]+)/(?P<branch>[^/]+)/(?P<path>.+)$")

FILE_SCOPE_ALLOWED = {"slicer", "vtk", "qt", "ctk", LIB}
SLICER_ONLY_MODULES = {"slicer", "qt", "vtk", "ctk"}
SCENE_ADAPTER = "scene/"  # the MRML adapter package: may import slicer and vtk, never qt/ctk
PYTHON_FLOOR = (3, 10)  # pyproject requires-python
SLICER_PYTHON = (3, 12)  # Slicer >= 5.10


# --- helpers ---------------------------------------------------------------------------------------


def _files(folder: Path, pattern: str = "*") -> set[str]:
    """Files under ``folder`` (relative POSIX paths), without caches and hidden files."""
    found = set()
    for path in folder.rglob(pattern):
        rel = path.relative_to(folder)
        if not path.is_file() or "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts):
            continue
        if path.suffix in (".pyc", ".pyo"):
            continue
        found.add(rel.as_posix())
    return found


def _cmake_commands(text: str) -> list[tuple[str, list[str]]]:
    """``[(command, [arguments])]`` of a CMake file: comments dropped, quoted arguments unquoted,
    nested parentheses kept inside arguments. Enough for the files of this repository."""
    commands = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if c.isalpha() or c == "_":
            start = i
            while i < n and (text[i].isalnum() or text[i] == "_"):
                i += 1
            name = text[start:i]
            while i < n and text[i] in " \t":
                i += 1
            if i >= n or text[i] != "(":
                continue
            i += 1
            args, current, depth = [], "", 0
            while i < n:
                c = text[i]
                if c == '"':
                    i += 1
                    value = ""
                    while i < n and text[i] != '"':
                        if text[i] == "\\" and i + 1 < n:
                            i += 1
                        value += text[i]
                        i += 1
                    args.append(value)
                    i += 1
                    continue
                if c == "#":
                    while i < n and text[i] != "\n":
                        i += 1
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    if depth == 0:
                        if current:
                            args.append(current)
                        i += 1
                        break
                    depth -= 1
                if c.isspace():
                    if current:
                        args.append(current)
                        current = ""
                else:
                    current += c
                i += 1
            commands.append((name.lower(), args))
            continue
        i += 1
    return commands


def _expand(value: str, variables: dict[str, list[str]]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: ";".join(variables.get(m.group(1), [])), value)


def _cmake_variables(path: Path) -> dict[str, list[str]]:
    """Variables ``set()`` in a CMake file (values expanded with the variables set before)."""
    variables: dict[str, list[str]] = {}
    for command, args in _cmake_commands(path.read_text(encoding="utf-8")):
        if command == "set" and args:
            variables[args[0]] = [_expand(a, variables) for a in args[1:]]
    return variables


def _module_cmake():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    return _cmake_variables(MODULE_CMAKE), _cmake_commands(text)


def _top_cmake() -> dict[str, str]:
    return {k: " ".join(v) for k, v in _cmake_variables(TOP_CMAKE).items()}


def _s4ext() -> dict[str, str]:
    entries = {}
    for line in S4EXT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        entries[key] = value.strip()
    return entries


def _catalog() -> dict:
    return json.loads(CATALOG_JSON.read_text(encoding="utf-8"))


def _module_ast() -> ast.Module:
    return ast.parse(MODULE_PY.read_text(encoding="utf-8"), filename=str(MODULE_PY))


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found in {MODULE_PY.relative_to(ROOT)}")


def _name(node: ast.AST) -> str:
    """Dotted name of a Name/Attribute node ('' for anything else)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _parameter_node_fields() -> dict[str, ast.expr]:
    """Fields of the @parameterNodeWrapper class of HealthiVert.py and their annotations."""
    tree = _module_ast()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            _name(d if not isinstance(d, ast.Call) else d.func).endswith("parameterNodeWrapper") for d in node.decorator_list
        ):
            return {
                s.target.id: s.annotation
                for s in node.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            }
    raise AssertionError("no @parameterNodeWrapper class in HealthiVert.py")


def _file_scope_imports(tree: ast.Module) -> list[tuple[str, int]]:
    """Top-level module names imported at file scope (not inside functions or classes)."""
    found = []

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.Import):
                found.extend((alias.name.split(".")[0], node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0 and node.module:
                    found.append((node.module.split(".")[0], node.lineno))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []) or [])

    visit(tree.body)
    return found


def _all_imports(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
    return found


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.relative_to(ROOT)} is not a PNG file"
    assert data[12:16] == b"IHDR", f"{path.relative_to(ROOT)}: PNG without IHDR chunk"
    return struct.unpack(">II", data[16:24])


# --- packaging (HealthiVert/CMakeLists.txt) ---------------------------------------------------------


def _assert_listed_exactly(listed: set[str], present: set[str], variable: str) -> None:
    """Every file present is listed in ``variable`` of HealthiVert/CMakeLists.txt, and nothing else."""
    assert not present - listed, f"add to {variable} in HealthiVert/CMakeLists.txt: {sorted(present - listed)}"
    assert not listed - present, f"listed in {variable} but missing: {sorted(listed - present)}"


def test_every_module_python_file_is_packaged():
    variables, _ = _module_cmake()
    listed = set(variables.get("MODULE_PYTHON_SCRIPTS", []))
    present = _files(MODULE_DIR, "*.py")
    _assert_listed_exactly(listed, present, "MODULE_PYTHON_SCRIPTS")
    assert f"{MODULE}.py" in listed


def test_every_core_python_file_is_packaged():
    variables, _ = _module_cmake()
    listed = set(variables.get("MODULE_LIB_PYTHON_SCRIPTS", []))
    present = {f"{LIB}/{p}" for p in _files(LIB_DIR, "*.py")}
    _assert_listed_exactly(listed, present, "MODULE_LIB_PYTHON_SCRIPTS")
    assert f"{LIB}/__init__.py" in listed


def test_every_resource_and_data_file_is_packaged():
    variables, _ = _module_cmake()
    listed = set(variables.get("MODULE_PYTHON_RESOURCES", []))
    present = {f"Resources/{p}" for p in _files(ROOT / "Resources")}
    present |= {f"{LIB}/{p}" for p in _files(LIB_DIR) if not p.endswith(".py")}
    _assert_listed_exactly(listed, present, "MODULE_PYTHON_RESOURCES")
    assert f"Resources/UI/{MODULE}.ui" in listed and f"Resources/Icons/{MODULE}.png" in listed


def test_listed_paths_stay_inside_the_package_folder():
    """ctkMacroCompilePythonScript copies <source dir>/<path> to <qt-scripted-modules>/<path>:
    a '..' or absolute path would land outside the packaged folder."""
    variables, _ = _module_cmake()
    for key in ("MODULE_PYTHON_SCRIPTS", "MODULE_LIB_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
        for path in variables.get(key, []):
            assert ".." not in Path(path).parts and not Path(path).is_absolute() and "$" not in path, (
                f"{key}: '{path}' must be a plain relative path (see the note in HealthiVert/CMakeLists.txt)"
            )


def test_module_cmake_builds_module_lib_and_tests():
    variables, commands = _module_cmake()
    assert variables["MODULE_NAME"] == [MODULE]
    calls = {name: args for name, args in commands}

    build = calls.get("slicermacrobuildscriptedmodule")
    assert build is not None, "slicerMacroBuildScriptedModule() missing"
    assert build[build.index("NAME") + 1] == "${MODULE_NAME}"
    assert build[build.index("SCRIPTS") + 1] == "${MODULE_PYTHON_SCRIPTS}"
    assert "WITH_GENERIC_TESTS" in build

    lib = calls.get("ctkmacrocompilepythonscript")
    assert lib is not None, "ctkMacroCompilePythonScript() for HealthiVertLib and resources missing"
    assert lib[lib.index("SCRIPTS") + 1] == "${MODULE_LIB_PYTHON_SCRIPTS}"
    assert lib[lib.index("RESOURCES") + 1] == "${MODULE_PYTHON_RESOURCES}"
    assert lib[lib.index("DESTINATION_DIR") + 1] == "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}"
    assert lib[lib.index("INSTALL_DIR") + 1] == "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"
    assert "NO_INSTALL_SUBDIR" in lib
    source_dir = lib[lib.index("SOURCE_DIR") + 1]
    root_variable = re.fullmatch(r"\$\{(\w+)\}", source_dir)
    assert root_variable, "SOURCE_DIR must be the repository root variable"
    root_definition = [a for n, a in commands if n == "get_filename_component" and a[0] == root_variable.group(1)]
    assert root_definition == [[root_variable.group(1), "${CMAKE_CURRENT_SOURCE_DIR}", "DIRECTORY"]]

    # slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py) inside if(BUILD_TESTING)
    depth_in_testing, found = None, False
    stack = []
    for name, args in commands:
        if name == "if":
            stack.append(args)
        elif name == "endif":
            stack.pop()
        elif name == "slicer_add_python_unittest":
            found = args == ["SCRIPT", "${MODULE_NAME}.py"]
            depth_in_testing = any(a == ["BUILD_TESTING"] for a in stack)
    assert found, "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py) missing"
    assert depth_in_testing, "slicer_add_python_unittest must be inside if(BUILD_TESTING)"


# --- top-level CMake and catalogue metadata ---------------------------------------------------------


def test_top_level_cmake():
    text = TOP_CMAKE.read_text(encoding="utf-8")
    commands = _cmake_commands(text)
    names = [name for name, _ in commands]
    calls = dict(commands)
    assert calls["cmake_minimum_required"] == ["VERSION", "3.16.3...3.19.7", "FATAL_ERROR"]
    assert calls["project"] == [MODULE], "project() must equal the catalogue file name (HealthiVert.json)"
    assert not MODULE.startswith("Slicer"), "the extension name must not start with 'Slicer'"
    variables = _top_cmake()
    for name in EXTENSION_VARIABLES:
        assert variables.get(name), f"{name} is not set"
    assert calls["find_package"] == ["Slicer", "REQUIRED"]
    includes = [args[0] for name, args in commands if name == "include"]
    assert includes == ["${Slicer_USE_FILE}", "${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"]
    assert ["add_subdirectory", MODULE] in [[n, *a] for n, a in commands]
    order = [names.index("project"), names.index("find_package"), names.index("add_subdirectory")]
    assert order == sorted(order)
    assert text.index(f"add_subdirectory({MODULE})") < text.index("## NEXT_MODULE") < text.index(
        "${Slicer_EXTENSION_GENERATE_CONFIG}"
    )


def test_description_is_short_and_says_research_use():
    description = _top_cmake()["EXTENSION_DESCRIPTION"]
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", description.strip()) if s]
    assert 1 <= len(sentences) <= 2, f"EXTENSION_DESCRIPTION should be 1-2 sentences, has {len(sentences)}"
    assert "research use" in description.lower()
    assert "diagnosis" in description.lower()


def test_s4ext_matches_cmake():
    cmake, s4ext = _top_cmake(), _s4ext()
    assert s4ext["scm"] == "git"
    assert s4ext["homepage"] == cmake["EXTENSION_HOMEPAGE"]
    assert s4ext["category"] == cmake["EXTENSION_CATEGORY"]
    assert s4ext["contributors"] == cmake["EXTENSION_CONTRIBUTORS"]
    assert s4ext["description"] == cmake["EXTENSION_DESCRIPTION"]
    assert s4ext["iconurl"] == cmake["EXTENSION_ICONURL"]
    assert s4ext["screenshoturls"].split() == cmake["EXTENSION_SCREENSHOTURLS"].split()
    assert s4ext["depends"].split() == cmake["EXTENSION_DEPENDS"].split()
    assert s4ext["enabled"] == "1"
    assert s4ext.get("status"), "status is empty"
    assert s4ext["build_subdirectory"] == "."


def test_catalog_json_matches_schema_and_cmake():
    catalog, cmake, s4ext = _catalog(), _top_cmake(), _s4ext()
    assert set(catalog) <= SCHEMA_PROPERTIES, f"not allowed by the schema: {sorted(set(catalog) - SCHEMA_PROPERTIES)}"
    assert SCHEMA_REQUIRED <= set(catalog)
    assert catalog["$schema"] == SCHEMA_URL
    assert catalog["category"] == cmake["EXTENSION_CATEGORY"]
    assert catalog["category"] in FITTING_CATEGORIES
    assert catalog["build_dependencies"] == cmake["EXTENSION_DEPENDS"].split() == ["PyTorch"]
    assert catalog["scm_url"] == s4ext["scmurl"]
    assert catalog["scm_revision"] == s4ext["scmrevision"] == "main"
    assert catalog["scm_url"].startswith("https://")
    # scm_url is the homepage repository; the repository name starts with "Slicer"
    assert catalog["scm_url"].removesuffix(".git") == cmake["EXTENSION_HOMEPAGE"]
    assert catalog["scm_url"].removesuffix(".git").rsplit("/", 1)[1].startswith("Slicer")
    assert CATALOG_JSON.stem == MODULE
    for key, value in catalog.items():
        if key == "build_dependencies":
            assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif key == "enabled":
            assert isinstance(value, bool)
        elif key == "tier":
            assert isinstance(value, int) and 1 <= value <= 5
        else:
            assert isinstance(value, str)


def _raw_urls(key: str) -> list[re.Match]:
    cmake, catalog = _top_cmake(), _catalog()
    homepage = cmake["EXTENSION_HOMEPAGE"].rstrip("/").split("/")
    matches = []
    for url in cmake[key].split():
        match = RAW_URL.match(url)
        assert match, f"{key}: '{url}' is not a raw.githubusercontent.com URL"
        assert [match["org"], match["repo"]] == homepage[-2:], f"{key}: '{url}' is not in the homepage repository"
        assert match["branch"] == catalog["scm_revision"], f"{key}: '{url}' is not on branch {catalog['scm_revision']}"
        assert match["path"].lower().endswith((".png", ".jpg", ".jpeg", ".gif")), f"{key}: '{url}' is not an image"
        matches.append(match)
    return matches


def test_icon_url_points_to_the_repository_icon():
    (match,) = _raw_urls("EXTENSION_ICONURL")
    assert ROOT / match["path"] == ICONS[0]


def test_screenshot_urls_point_into_the_repository():
    matches = _raw_urls("EXTENSION_SCREENSHOTURLS")
    assert matches, "EXTENSION_SCREENSHOTURLS needs at least one URL"
    missing = [m["path"] for m in matches if not (ROOT / m["path"]).is_file()]
    assert not missing, f"screenshots referenced but not in the repository: {missing}"


@pytest.mark.parametrize("icon", ICONS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_icons_are_128_png(icon):
    assert icon.is_file(), f"{icon.relative_to(ROOT)} missing (python scripts/make_icon.py)"
    assert _png_size(icon) == (128, 128)


def test_licence_in_repository_root():
    assert any((ROOT / name).is_file() for name in ("LICENSE", "LICENSE.txt", "LICENSE.md"))


# --- the .ui file -------------------------------------------------------------------------------------


def _ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def _property(widget: ET.Element, name: str):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            value = list(prop)[0]
            if value.tag == "stringlist":
                return [s.text for s in value.findall("string")]
            return value.text
    return None


def test_ui_parses_and_top_widget_is_the_module():
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui"
    assert root.findtext("class") == MODULE
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == MODULE


def test_ui_parameter_names_match_parameter_node_fields():
    fields = _parameter_node_fields()
    bound = {}
    for name, widget in _ui_widgets().items():
        parameter = _property(widget, "SlicerParameterName")
        if parameter is not None:
            assert parameter in fields, (
                f"widget '{name}': SlicerParameterName '{parameter}' is not a parameter node field {sorted(fields)}"
            )
            assert parameter not in bound, f"'{parameter}' bound to both '{bound[parameter]}' and '{name}'"
            bound[parameter] = name
    assert bound, "no widget has a SlicerParameterName"


def test_ui_widget_types_suit_their_parameters():
    """The GUI connectors of slicer.parameterNodeWrapper: a node field needs a qMRMLNodeComboBox that
    lists the node class; str a QLineEdit (or a QComboBox with Choice); bool a QCheckBox; etc."""
    fields = _parameter_node_fields()
    for name, widget in _ui_widgets().items():
        parameter = _property(widget, "SlicerParameterName")
        if parameter is None:
            continue
        annotation = fields[parameter]
        widget_class = widget.get("class")
        annotated = isinstance(annotation, ast.Subscript) and _name(annotation.value).endswith("Annotated")
        extras = annotation.slice.elts[1:] if annotated else []
        choice = any(isinstance(e, ast.Call) and _name(e.func).endswith("Choice") for e in extras)
        base = _name(annotation.slice.elts[0]) if annotated else _name(annotation)
        union = isinstance(annotation, ast.Subscript) and _name(annotation.value).endswith("Union")
        if union:
            members = [_name(e) for e in annotation.slice.elts if not (isinstance(e, ast.Constant) and e.value is None)]
            assert len(members) < len(annotation.slice.elts), f"'{parameter}': a Union of nodes needs None as a member"
            assert all(m.startswith("vtkMRML") for m in members), f"'{parameter}': a Union of MRML node classes only"
            assert widget_class == "qMRMLNodeComboBox", f"'{name}' ({parameter}: Union) must be a qMRMLNodeComboBox"
            assert (_property(widget, "nodeTypes") or []) == members, f"'{name}': nodeTypes must be {members}"
        elif base in _module_enums():
            assert widget_class == "QComboBox", f"'{name}' ({parameter}: enum {base}) must be a QComboBox"
        elif base.startswith("vtkMRML"):
            assert widget_class == "qMRMLNodeComboBox", f"'{name}' ({parameter}: {base}) must be a qMRMLNodeComboBox"
            assert base in (_property(widget, "nodeTypes") or []), f"'{name}': nodeTypes must list {base}"
        elif base == "str":
            allowed = {"QLineEdit", "QTextEdit", "QPlainTextEdit"} | ({"QComboBox"} if choice else set())
            assert widget_class in allowed, f"'{name}' ({parameter}: str) must be one of {sorted(allowed)}"
        elif base == "bool":
            assert widget_class in {"QCheckBox", "QPushButton"}, f"'{name}' ({parameter}: bool)"
        elif base == "int":
            assert widget_class in {"QSpinBox", "QSlider"} or choice, f"'{name}' ({parameter}: int)"
        elif base == "float":
            assert widget_class in {"QDoubleSpinBox", "ctkSliderWidget"} or choice, f"'{name}' ({parameter}: float)"


def _module_enums() -> dict[str, list[str]]:
    """The enum.Enum classes of HealthiVert.py and their member names."""
    enums = {}
    for node in _module_ast().body:
        if isinstance(node, ast.ClassDef) and any(_name(b) in ("enum.Enum", "Enum") for b in node.bases):
            members = [t.id for a in node.body if isinstance(a, ast.Assign) for t in a.targets if isinstance(t, ast.Name)]
            methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
            assert "label" in methods, f"enum {node.name} needs a label() with translatable texts for its combo box"
            enums[node.name] = members
    return enums


def test_every_parameter_is_bound_or_handled_by_the_widget():
    """Each parameter node field has a widget in the .ui (SlicerParameterName) or is set by the code."""
    fields = set(_parameter_node_fields())
    bound = {_property(w, "SlicerParameterName") for w in _ui_widgets().values()} - {None}
    source = MODULE_PY.read_text(encoding="utf-8")
    handled = {f for f in fields if re.search(rf"_parameterNode\.{f}\s*=|\bp\.{f}\s*=", source)}
    assert not fields - bound - handled, f"parameters neither in the .ui nor set by the widget: {sorted(fields - bound - handled)}"


def test_widgets_used_by_the_module_exist_in_the_ui():
    widgets = _ui_widgets()
    used = set()
    for node in ast.walk(_module_ast()):
        if isinstance(node, ast.Attribute) and _name(node.value) == "self.ui":
            used.add(node.attr)
    assert used, "the module uses no self.ui.<widget>"
    assert not used - set(widgets), f"used in HealthiVert.py but not in the .ui: {sorted(used - set(widgets))}"
    for name in ("applyButton", "progressBar", "logTextEdit"):
        assert name in widgets


def test_ui_node_selectors_get_the_scene():
    """uiWidget.setMRMLScene() reaches a qMRMLNodeComboBox only through a mrmlSceneChanged connection."""
    root = ET.parse(UI_FILE).getroot()
    receivers = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("sender") == MODULE
        and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    selectors = {n for n, w in _ui_widgets().items() if w.get("class", "").startswith("qMRML") and n != MODULE}
    assert selectors and not selectors - receivers, f"no mrmlSceneChanged connection for {sorted(selectors - receivers)}"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    custom = {w.get("class") for w in _ui_widgets().values() if not w.get("class", "").startswith("Q")}
    assert not custom - declared, f"declare in <customwidgets>: {sorted(custom - declared)}"


def test_module_loads_the_ui_file():
    assert f"UI/{MODULE}.ui" in MODULE_PY.read_text(encoding="utf-8")
    assert UI_FILE.is_file()


# --- HealthiVert.py -------------------------------------------------------------------------------


def test_module_file_is_python_312():
    source = MODULE_PY.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(MODULE_PY), feature_version=SLICER_PYTHON)
    compile(tree, str(MODULE_PY), "exec")


def test_module_imports_nothing_heavy_at_file_scope():
    allowed = set(sys.stdlib_module_names) | FILE_SCOPE_ALLOWED | {"__future__"}
    offending = [(name, line) for name, line in _file_scope_imports(_module_ast()) if name not in allowed]
    assert not offending, (
        f"file-scope imports other than stdlib/{sorted(FILE_SCOPE_ALLOWED)} in HealthiVert.py (import them "
        f"inside the function that needs them): {offending}"
    )


def test_module_classes_follow_the_template():
    tree = _module_ast()
    expected = {
        MODULE: {"ScriptedLoadableModule"},
        f"{MODULE}Widget": {"ScriptedLoadableModuleWidget", "VTKObservationMixin"},
        f"{MODULE}Logic": {"ScriptedLoadableModuleLogic"},
        f"{MODULE}Test": {"ScriptedLoadableModuleTest"},
    }
    for name, bases in expected.items():
        cls = _class(tree, name)
        assert bases <= {_name(b).split(".")[-1] for b in cls.bases}, f"{name} must derive from {sorted(bases)}"
    methods = {n.name for n in _class(tree, f"{MODULE}Widget").body if isinstance(n, ast.FunctionDef)}
    assert {"setup", "cleanup", "enter", "exit", "setParameterNode", "_checkCanApply", "onApplyButton"} <= methods
    logic = {n.name for n in _class(tree, f"{MODULE}Logic").body if isinstance(n, ast.FunctionDef)}
    assert {"getParameterNode", "process", "cancel", "loadResults"} <= logic
    tests = {n.name for n in _class(tree, f"{MODULE}Test").body if isinstance(n, ast.FunctionDef)}
    assert {"setUp", "runTest"} <= tests and any(t.startswith("test_") for t in tests)
    fields = _parameter_node_fields()
    annotations = {k: ast.unparse(v) for k, v in fields.items()}
    assert annotations["ctVolume"] == "vtkMRMLScalarVolumeNode"
    # parameterNodeWrapper needs None in a union of node types (slicer/parameterNodeWrapper/util.py)
    assert annotations["vertebrae"] == "Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]"
    assert annotations["subregions"] == "Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]"
    assert annotations["targetPoint"] == "vtkMRMLMarkupsFiducialNode"
    assert annotations["targetLevel"] == "str" and annotations["engine"] == "str"
    assert {annotations[k] for k in ("targetMode", "labelNumbering", "device")} == {"TargetMode", "LabelNumbering", "Device"}


def test_module_texts_are_translatable_and_cite_the_method():
    init = next(n for n in _class(_module_ast(), MODULE).body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    texts = {}
    for node in ast.walk(init):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and _name(node.targets[0]).startswith("self.parent."):
            texts[_name(node.targets[0]).split(".")[-1]] = node.value
    for key in ("title", "helpText", "acknowledgementText"):
        value = texts[key]
        assert isinstance(value, ast.Call) and _name(value.func) == "_", f"parent.{key} must be wrapped in _()"
    title = texts["title"].args[0].value
    assert title == MODULE
    categories = texts["categories"]
    assert isinstance(categories, ast.List) and len(categories.elts) == 1
    category = categories.elts[0]
    assert isinstance(category, ast.Call) and _name(category.func) == "translate"
    assert category.args[1].value == _top_cmake()["EXTENSION_CATEGORY"]
    contributors = [e.value for e in texts["contributors"].elts]
    assert contributors == [_top_cmake()["EXTENSION_CONTRIBUTORS"]]
    acknowledgement = texts["acknowledgementText"].args[0].value
    for needle in ("HealthiVert-GAN", "Zhang", "10.1109/JBHI.2025.3572458", "2503.05990", "2025"):
        assert needle in acknowledgement, f"acknowledgement must cite the method: {needle!r} missing"
    help_text = texts["helpText"].args[0].value.lower()
    assert "research use only" in help_text and "diagnosis" in help_text


# --- the core package -------------------------------------------------------------------------------


def test_core_never_imports_slicer_qt_or_vtk():
    offending = []
    for rel in sorted(_files(LIB_DIR, "*.py")):
        path = LIB_DIR / rel
        forbidden = {"qt", "ctk"} if rel.startswith(SCENE_ADAPTER) else SLICER_ONLY_MODULES
        for name, line in _all_imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if name in forbidden:
                offending.append(f"{LIB}/{rel}:{line} imports {name}")
    assert not offending, "the core must not know Slicer exists (only scene/ may import slicer/vtk): " + "; ".join(
        offending
    )


def test_all_python_parses_for_the_supported_versions():
    """Python >= 3.10 (pyproject) for the core and the module; 3.12 (Slicer >= 5.10) is checked above."""
    paths = [MODULE_PY] + [LIB_DIR / p for p in sorted(_files(LIB_DIR, "*.py"))]
    for path in paths:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=PYTHON_FLOOR)


# --- the module's contract with HealthiVertLib ----------------------------------------------------


def _core_attributes_used() -> dict[str, set[str]]:
    """``core("scene").x`` / ``scene.x`` uses in HealthiVert.py, per core module."""
    used: dict[str, set[str]] = {}
    aliases: dict[str, str] = {}
    tree = _module_ast()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and _name(node.value.func) == "core":
            for target in node.targets:
                if isinstance(target, ast.Name):
                    aliases[target.id] = node.value.args[0].value
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        if isinstance(value, ast.Call) and _name(value.func) == "core":
            used.setdefault(value.args[0].value, set()).add(node.attr)
        elif isinstance(value, ast.Name) and value.id in aliases:
            used.setdefault(aliases[value.id], set()).add(node.attr)
    return used


def test_module_uses_only_existing_core_functions():
    import importlib

    used = _core_attributes_used()
    assert {"scene", "app.background", "engines"} <= set(used), f"the module should use scene, app.background, engines: {sorted(used)}"
    for module, names in used.items():
        if module == "scene":
            text = (LIB_DIR / "scene" / "__init__.py").read_text(encoding="utf-8")  # imports slicer: by its source
            defined = {a.asname or a.name for n in ast.parse(text).body if isinstance(n, ast.ImportFrom) for a in n.names}
        else:
            defined = set(dir(importlib.import_module(f"{LIB}.{module}")))
        assert not names - defined, f"HealthiVert.py uses {LIB}.{module}.{sorted(names - defined)}, which do not exist"


def test_module_command_line_is_accepted_by_the_cli(tmp_path):
    from HealthiVertLib.app import background

    cli, parser, grade = _grade_parser()
    command = background.grade_command(
        str(tmp_path / "seg.nii.gz"), str(tmp_path / "out"), str(tmp_path / "ct.nii.gz"), "t12, L1",
        "context", "verse", "Case 1", False, str(tmp_path / "sub.nii.gz"),
    )  # fmt: skip
    assert command[:2] == ["-m", f"{LIB}.app.cli"]
    args = parser.parse_args(command[2:])
    assert args.func is grade.get_default("func")
    assert args.vertebra == ["T12", "L1"] and not args.all
    assert args.ct.endswith("ct.nii.gz") and args.seg.endswith("seg.nii.gz") and args.out.endswith("out")
    assert args.subregions.endswith("sub.nii.gz")
    options = (args.engine, args.labels, args.name, args.no_figures, args.progress)
    assert options == ("context", "verse", "Case 1", True, "lines")
    everything = parser.parse_args(background.grade_command("seg.nii.gz", "out")[2:])
    assert everything.all and everything.vertebra is None and everything.ct is None and not everything.no_figures
    assert {"--seg", "--ct", "--subregions", "--vertebra", "--all", "--labels", "--engine"} <= background.grade_options()


def _grade_parser():
    from HealthiVertLib.app import cli

    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return cli, parser, subparsers.choices["grade"]


def test_engines_offered_by_the_module_are_accepted_by_the_cli():
    from HealthiVertLib.app import background
    from HealthiVertLib import engines

    _, _, grade = _grade_parser()
    engine = next(a for a in grade._actions if "--engine" in a.option_strings)
    assert set(engines.ENGINES) <= set(engine.choices), "every engine of HealthiVertLib.engines must be a --engine choice"
    assert background.PROGRESS_PREFIX == __import__("HealthiVertLib.app.cli", fromlist=["x"]).PROGRESS_PREFIX


def test_torch_dependency_is_declared_when_an_engine_needs_it():
    """EXTENSION_DEPENDS PyTorch exactly when the core has a network engine (the generator package)."""
    from HealthiVertLib import engines

    tree = _module_ast()
    torch_engines = next(
        ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and _name(n.targets[0]) == "TORCH_ENGINES"
    )
    needs_torch = bool(set(engines.ENGINES) & set(torch_engines)) or (LIB_DIR / "engines" / "generator" / "__init__.py").is_file()
    depends = _top_cmake()["EXTENSION_DEPENDS"].split()
    assert ("PyTorch" in depends) == needs_torch, (
        "EXTENSION_DEPENDS (and .s4ext depends, .json build_dependencies) must name PyTorch exactly when an "
        "engine needs torch"
    )


def test_module_level_rules_match_the_core():
    from HealthiVertLib.app import background
    from HealthiVertLib.measure import grading
    from HealthiVertLib.io import labels

    scene_tree = ast.parse((LIB_DIR / "scene" / "results.py").read_text(encoding="utf-8"))  # imports slicer
    GRADE_NAMES = next(
        ast.literal_eval(n.value) for n in scene_tree.body if isinstance(n, ast.Assign) and _name(n.targets[0]) == "GRADE_NAMES"
    )
    matched = {level for level in labels.LEVELS if background.LEVEL_PATTERN.match(level)}
    assert matched == set(labels.GRADABLE_LEVELS)
    assert background.parse_levels(" t12, l1;L1 ") == ["T12", "L1"]
    assert background.invalid_levels("L1 C3 X9") == ["C3", "X9"]
    assert tuple(GRADE_NAMES) == tuple(grading.GRADE_NAMES)


def test_sample_data_checksums_match_the_bundled_files():
    import hashlib

    tree = _module_ast()
    checksums = next(
        ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and _name(n.targets[0]) == "SAMPLE_SHA256"
    )
    for name, digest in checksums.items():
        assert hashlib.sha256((LIB_DIR / "data" / "sample" / name).read_bytes()).hexdigest() == digest, name
