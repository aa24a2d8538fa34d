"""The Slicer module against the Slicer API it was written for, structurally.

``slicer_api_manifest.json`` lists the Slicer Python names HealthiVert/HealthiVert.py and
Resources/UI/HealthiVert.ui rely on, each with the Slicer source file and commit it was read in.
This test walks the module's AST and the .ui file and fails on any ``slicer.*``, ``slicer.util.*``,
``SampleData.*``, ``DICOMLib.*`` or ``PyTorchUtils.*`` (the PyTorch extension) name, keyword argument,
base-class member, parameter-node type or member, GUI binding or widget class the manifest does not list, and on two misuses the Slicer source rules out
(unpacking ``SampleData.downloadSample``, which returns one node; a list of ``loadFileProperties``,
which SampleData copies as one dict). With slicer-core installed, the MRML names and the
``slicer.util`` signatures of the manifest are checked against Slicer's own code, and the module's
``pip_ensure`` path runs against stand-ins that behave like ``slicer.packaging`` and ``slicer.pydeps``.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import inspect
import json
import re
import sys
import types
import unittest
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "HealthiVert" / "HealthiVert.py"
UI = ROOT / "Resources" / "UI" / "HealthiVert.ui"
MANIFEST = json.loads((Path(__file__).with_name("slicer_api_manifest.json")).read_text(encoding="utf-8"))
ROOTS = ("slicer", "SampleData", "PyTorchUtils", "DICOMLib")  # import roots whose names must be in the manifest
DICOM_EXPORT = ROOT / "HealthiVertLib" / "scene" / "dicom_export.py"  # uses Slicer's DICOM database the module passes


# --- the checker -------------------------------------------------------------------------------------


@dataclass
class Report:
    """What a module uses of the Slicer API, and what the manifest does not cover."""

    used: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    parameter_fields: dict[str, list[str]] = field(default_factory=dict)  # field -> type kinds

    def bad(self, line: int, text: str) -> None:
        self.violations.append(f"line {line}: {text}")


def _aliases(tree: ast.AST, report: Report) -> dict[str, str]:
    """Local name -> dotted name, for every import of a name under ROOTS (imported names are used)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ROOTS:
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    else:
                        aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
                    if "." in alias.name:  # a submodule is a name of the API; the root package itself is not
                        report.used.add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ROOTS and node.level == 0:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                report.used.add(f"{node.module}.{alias.name}")
    return aliases


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``a.b.c`` for an attribute chain rooted at an imported alias, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in aliases:
        return ".".join([aliases[node.id], *reversed(parts)])
    return None


def _names(tree: ast.AST, aliases: dict[str, str], report: Report) -> None:
    names = MANIFEST["names"]
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            dotted = _dotted(node, aliases)
            if dotted is not None:
                report.used.add(dotted)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):  # fmt: skip
            dotted = _dotted(node.args[0], aliases)
            if dotted is not None:
                report.used.add(f"{dotted}.{node.args[1].value}")
        # Class().method(...) of a class the manifest lists methods of (e.g. PyTorchUtilsLogic().installTorch)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Call):
            owner = _dotted(node.func.value.func, aliases)
            if owner and any(key.startswith(f"{owner}().") for key in names):
                report.used.add(f"{owner}().{node.func.attr}")
        if isinstance(node, ast.Call):
            dotted = _dotted(node.func, aliases)
            if dotted is None and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Call):
                owner = _dotted(node.func.value.func, aliases)
                dotted = f"{owner}().{node.func.attr}" if owner else None
            entry = names.get(dotted or "")
            if entry and "params" in entry and "**kwargs" not in entry["params"]:
                for keyword in node.keywords:
                    if keyword.arg is not None and keyword.arg not in entry["params"]:
                        report.bad(node.lineno, f"{dotted}() has no keyword '{keyword.arg}' (it takes {entry['params']})")
            if dotted == "SampleData.SampleDataLogic.registerCustomSampleDataSource":
                for keyword in node.keywords:
                    if keyword.arg == "loadFileProperties" and isinstance(keyword.value, (ast.List, ast.Tuple)):
                        report.bad(node.lineno, "loadFileProperties is one dict for every file of a source, not a list")
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            dotted = _dotted(node.value.func, aliases)
            if dotted == "SampleData.downloadSample" and any(isinstance(t, (ast.Tuple, ast.List)) for t in node.targets):
                report.bad(node.lineno, "SampleData.downloadSample returns the first loaded node only; use downloadSamples")
    bases = MANIFEST["base_classes"]
    for dotted in sorted(report.used):
        owner, _, member = dotted.rpartition(".")
        if owner in names and owner.rsplit(".", 1)[-1] in bases:  # e.g. ScriptedLoadableModuleWidget.setup(self)
            if member not in bases[owner.rsplit(".", 1)[-1]]["members"]:
                report.bad(0, f"'{dotted}': {member} is not a member of {owner} in the manifest")
        elif dotted not in names:
            report.bad(0, f"'{dotted}' is not in slicer_api_manifest.json (read it in the Slicer source first)")


def _base_members(tree: ast.Module, aliases: dict[str, str], report: Report) -> None:
    bases_manifest = MANIFEST["base_classes"]
    for cls in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
        bases = [(_dotted(b, aliases) or getattr(b, "id", "")).rsplit(".", 1)[-1] for b in cls.bases]
        known = [b for b in bases if b in bases_manifest]
        if not known:
            continue
        own = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        own |= {t.id for n in cls.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        own |= {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
                and isinstance(n.value, ast.Name) and n.value.id == "self"}  # fmt: skip
        members = {m for b in known for m in bases_manifest[b]["members"]}
        parent_members = {m for b in known for m in bases_manifest[b].get("parent_members", {}).get("members", [])}
        testcase = any(bases_manifest[b].get("also") == "unittest.TestCase" for b in known)
        for node in ast.walk(cls):
            if not isinstance(node, ast.Attribute):
                continue
            if isinstance(node.value, ast.Name) and node.value.id == "self" and isinstance(node.ctx, ast.Load):
                if node.attr not in own and node.attr not in members and not (testcase and hasattr(unittest.TestCase, node.attr)):
                    report.bad(node.lineno, f"{cls.name}: self.{node.attr} is neither defined here nor a member of {known}")
            elif isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "super" and node.attr not in members:
                report.bad(node.lineno, f"{cls.name}: super().{node.attr} is not a member of {known}")
            elif (isinstance(node.value, ast.Attribute) and node.value.attr == "parent" and node.attr not in parent_members
                  and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):  # fmt: skip
                report.bad(node.lineno, f"{cls.name}: self.parent.{node.attr} is not in the manifest for {known}")


def _type_kinds(annotation: ast.AST, aliases: dict[str, str], enums: set[str]) -> list[str]:
    """The parameter-node type kinds of an annotation (manifest parameter_node.types names)."""
    names = MANIFEST["names"]
    if isinstance(annotation, ast.Constant) and annotation.value is None:
        return ["None"]
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        return ["typing.Union", *_type_kinds(annotation.left, aliases, enums), *_type_kinds(annotation.right, aliases, enums)]
    if isinstance(annotation, ast.Subscript):
        head = getattr(annotation.value, "id", getattr(annotation.value, "attr", ""))
        elements = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        inner = [k for e in elements for k in _type_kinds(e, aliases, enums)]
        if head == "Optional":
            return ["typing.Union", "None", *inner]
        return [{"Union": "typing.Union", "List": "list", "Tuple": "tuple", "Dict": "dict"}.get(head, head), *inner]
    name = getattr(annotation, "id", None)
    if name in aliases and names.get(aliases[name], {}).get("node"):
        return ["vtkMRMLNode"]
    if name in enums:
        return ["enum.Enum"]
    if name in ("int", "float", "str", "bool", "list", "tuple", "dict") and hasattr(builtins, name):
        return [name]
    return [f"unknown type {ast.unparse(annotation)}"]


def _parameter_node(tree: ast.Module, aliases: dict[str, str], report: Report) -> None:
    spec = MANIFEST["parameter_node"]
    enums = {n.name for n in tree.body if isinstance(n, ast.ClassDef)
             and any(ast.unparse(b) in ("enum.Enum", "Enum") for b in n.bases)}  # fmt: skip
    wrapped = [n for n in tree.body if isinstance(n, ast.ClassDef)
               and any(_dotted(d, aliases) == "slicer.parameterNodeWrapper.parameterNodeWrapper"
                       or aliases.get(getattr(d, "id", "")) == "slicer.parameterNodeWrapper.parameterNodeWrapper"
                       for d in n.decorator_list)]  # fmt: skip
    for cls in wrapped:
        for item in cls.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                kinds = _type_kinds(item.annotation, aliases, enums)
                report.parameter_fields[item.target.id] = kinds
                for kind in kinds:
                    if kind not in spec["types"]["names"]:
                        report.bad(item.lineno, f"parameter {item.target.id}: {kind} has no parameterNodeWrapper serializer")
                if kinds[0] == "typing.Union" and kinds.count("vtkMRMLNode") >= 2 and "None" not in kinds:
                    report.bad(item.lineno, f"parameter {item.target.id}: a Union of node types needs a None member to hold None")
    if not wrapped:
        return
    fields = set(report.parameter_fields)
    allowed = set(spec["instance_members"]["names"]) | fields
    for function in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
        holders = {"self._parameterNode"}
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and ast.unparse(node.value) == "self._parameterNode":
                holders |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(function):
            if isinstance(node, ast.Attribute) and ast.unparse(node.value) in holders and node.attr not in allowed:
                report.bad(node.lineno, f"parameter node member '{node.attr}' is neither a parameter nor a parameterNodeWrapper member")


def check_module(source: str) -> Report:
    """Everything the manifest does not cover in a module's source text."""
    report = Report()
    tree = ast.parse(source)
    aliases = _aliases(tree, report)
    _names(tree, aliases, report)
    _base_members(tree, aliases, report)
    _parameter_node(tree, aliases, report)
    return report


def _field_kind(kinds: list[str]) -> str:
    """The GUI connector kind of a parameter: a node or union of nodes (None allowed) is one node kind."""
    core = [k for k in kinds if k not in ("typing.Union", "None")]
    return core[0] if core and len(set(core)) == 1 else "+".join(kinds)


def check_ui(text: str, parameter_fields: dict[str, list[str]]) -> list[str]:
    """Widget classes the manifest does not list, and parameter bindings no GUI connector supports."""
    violations = []
    tree = ET.fromstring(text)
    classes = MANIFEST["ui_widget_classes"]
    pairs = {tuple(p) for p in MANIFEST["parameter_node"]["gui_connectors"]["pairs"]}
    for custom in tree.iter("customwidget"):
        for tag in ("class", "extends"):
            if custom.findtext(tag) not in classes:
                violations.append(f"custom widget {tag} '{custom.findtext(tag)}' is not in the manifest")
    for widget in tree.iter("widget"):
        cls = widget.get("class")
        if cls not in classes:
            violations.append(f"widget {widget.get('name')}: class '{cls}' is not in the manifest")
        for prop in widget.findall("property"):
            if prop.get("name") != "SlicerParameterName":
                continue
            parameter = "".join(prop.itertext()).strip()
            if parameter not in parameter_fields:
                violations.append(f"widget {widget.get('name')}: SlicerParameterName '{parameter}' is not a parameter")
            elif (cls, _field_kind(parameter_fields[parameter])) not in pairs:
                violations.append(f"widget {widget.get('name')}: no parameterNodeWrapper GUI connector binds {cls} to "
                                  f"{parameter} ({_field_kind(parameter_fields[parameter])})")
    return violations


# --- the module and its .ui --------------------------------------------------------------------------


def test_slicer_api_manifest_cites_a_read_source_for_every_name():
    sources = MANIFEST["sources"]
    for key, source in sources.items():
        if "repo" in source:
            assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]), key
            assert source["path"] and source["checked"].split(";")[0].split(" ")[0] in ("read", "exists"), key
        else:
            assert source.get("package") and source.get("checked"), key
    for name, entry in MANIFEST["names"].items():
        assert entry["source"] in sources, name
    for group in (MANIFEST["base_classes"].values(), [MANIFEST["parameter_node"][k] for k in ("types", "instance_members", "gui_connectors")],
                  MANIFEST["node_attributes"].values()):
        for entry in group:
            assert entry["source"] in sources
    assert set(MANIFEST["ui_widget_classes"].values()) <= set(sources)


def test_slicer_api_module_uses_only_names_in_the_manifest():
    report = check_module(MODULE.read_text(encoding="utf-8"))
    assert not report.violations, "\n".join(report.violations)
    # the walk sees what the module does use (a checker that sees nothing passes everything)
    for name in ("slicer.util.loadUI", "slicer.util.tryWithErrorDisplay", "slicer.packaging.pip_ensure", "slicer.pydeps.pip_ensure",
                 "slicer.util.pip_install", "slicer.app.temporaryPath", "SampleData.SampleDataLogic.registerCustomSampleDataSource",
                 "slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup", "slicer.ScriptedLoadableModule.ScriptedLoadableModuleWidget",
                 "slicer.dicomDatabase", "DICOMLib.DICOMUtils.importDicom"):  # fmt: skip
        assert name in report.used, name
    assert report.parameter_fields["vertebrae"] == ["typing.Union", "vtkMRMLNode", "vtkMRMLNode", "None"]
    assert report.parameter_fields["labelNumbering"] == ["enum.Enum"]


def test_slicer_api_dicom_export_uses_only_database_members_and_attributes_in_the_manifest():
    """HealthiVertLib/scene/dicom_export.py gets Slicer's DICOM database (a ctkDICOMDatabase) as ``database``
    and reads the node attribute a DICOM plugin sets: every member and attribute name it uses is in the manifest."""
    tree = ast.parse(DICOM_EXPORT.read_text(encoding="utf-8"))  # read, not imported: HealthiVertLib.scene needs slicer-core
    members = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "database"}
    members |= {n.args[1].value for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "getattr"
                and getattr(n.args[0], "id", "") == "database" and isinstance(n.args[1], ast.Constant)}  # fmt: skip
    assert members == {"isOpen", "fileForInstance"}  # the walk sees what the module uses
    for member in members:
        assert f"slicer.dicomDatabase.{member}" in MANIFEST["names"], member
    attributes = [n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
                  and any(getattr(t, "id", "") == "DICOM_INSTANCES_ATTRIBUTE" for t in n.targets)]  # fmt: skip
    assert attributes == ["DICOM.instanceUIDs"] and attributes[0] in MANIFEST["node_attributes"]
    entry = MANIFEST["names"]["DICOMLib.DICOMUtils.importDicom"]
    assert entry["params"] == ["dicomDataDir", "dicomDatabase", "copyFiles"]


def test_slicer_api_ui_widgets_and_bindings_are_in_the_manifest():
    fields = check_module(MODULE.read_text(encoding="utf-8")).parameter_fields
    text = UI.read_text(encoding="utf-8")
    assert not check_ui(text, fields), "\n".join(check_ui(text, fields))
    assert text.count("SlicerParameterName") >= 8  # the bindings checked above exist


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import slicer\nslicer.util.notAFunction()\n", "'slicer.util.notAFunction' is not in"),
        ("from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget as W\nW.setUp(None)\n", "setUp is not a member"),
        ("import slicer\nslicer.util.tryWithErrorDisplay('x', waitcursor=True)\n", "has no keyword 'waitcursor'"),
        ("import slicer.packaging as p\np.pip_ensure([], promptInstall=False)\n", "has no keyword 'promptInstall'"),
        ("import slicer.packaging as p\nif hasattr(p, 'pipEnsure'): pass\n", "'slicer.packaging.pipEnsure' is not in"),
        ("import SampleData\nct, seg = SampleData.downloadSample('x')\n", "returns the first loaded node only"),
        ("import PyTorchUtils\nPyTorchUtils.PyTorchUtilsLogic().installTorch(confirm=True)\n", "has no keyword 'confirm'"),
        ("import SampleData\nSampleData.SampleDataLogic.registerCustomSampleDataSource(loadFileProperties=[{}, {}])\n", "one dict"),
        (("from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget\n"
         "class W(ScriptedLoadableModuleWidget):\n    def setup(self):\n        self.resourcePth('x')\n"), "self.resourcePth"),
        (("from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget\n"
         "class W(ScriptedLoadableModuleWidget):\n    def enter(self):\n        return self.parent.isEnteredd\n"), "self.parent.isEnteredd"),
        ("from slicer.parameterNodeWrapper import parameterNodeWrapper\n@parameterNodeWrapper\nclass P:\n    x: complex\n",
         "no parameterNodeWrapper serializer"),
        (("from typing import Union\nfrom slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode\n"
         "from slicer.parameterNodeWrapper import parameterNodeWrapper\n@parameterNodeWrapper\nclass P:\n"
         "    x: Union[vtkMRMLScalarVolumeNode, vtkMRMLTableNode]\n"), "needs a None member"),
        (("from slicer.parameterNodeWrapper import parameterNodeWrapper\n@parameterNodeWrapper\nclass P:\n    x: str\n"
         "class W:\n    def f(self):\n        self._parameterNode.connectGUI(None)\n"), "'connectGUI'"),
    ],
)  # fmt: skip
def test_slicer_api_checker_flags_what_the_manifest_does_not_have(source, expected):
    violations = check_module(source).violations
    assert any(expected in v for v in violations), violations


def test_slicer_api_ui_checker_flags_unknown_widgets_and_unbindable_parameters():
    ui = ('<ui><widget class="qMRMLWidget" name="top"><widget class="ctkSliderWidget" name="s"/>'
          '<widget class="QLineEdit" name="mode"><property name="SlicerParameterName"><string>targetMode</string></property>'
          '</widget><widget class="QComboBox" name="x"><property name="SlicerParameterName"><string>nope</string></property>'
          '</widget></widget></ui>')  # fmt: skip
    violations = check_ui(ui, {"targetMode": ["enum.Enum"]})
    assert any("ctkSliderWidget" in v for v in violations)
    assert any("binds QLineEdit to targetMode" in v for v in violations)
    assert any("'nope' is not a parameter" in v for v in violations)


# --- against slicer-core (Slicer's own MRML and util.py) ---------------------------------------------


def _slicer():
    """slicer-core's ``slicer``, with test_scene's rule: required where it has wheels, else skipped."""
    from test_scene import slicer

    return slicer


def test_slicer_api_mrml_names_exist_in_slicer_core():
    slicer = _slicer()
    for name, entry in MANIFEST["names"].items():
        if entry["source"] != "mrml":
            continue
        target = slicer
        for part in entry.get("resolve", name.split(".", 1)[1]).split("."):
            assert hasattr(target, part), f"{name}: slicer-core has no {part}"
            target = getattr(target, part)
        if entry.get("node"):
            assert issubclass(target, slicer.vtkMRMLNode), name


def test_slicer_api_util_signatures_match_slicer_cores_util():
    """Slicer's util.py as shipped in slicer-core 5.12.4.0 has every slicer.util name with the listed parameters."""
    slicer = _slicer()
    for name, entry in MANIFEST["names"].items():
        if not name.startswith("slicer.util.") or "params" not in entry:
            continue
        function = getattr(slicer.util, name.rsplit(".", 1)[1])
        params = [("**" + p.name) if p.kind is p.VAR_KEYWORD else p.name for p in inspect.signature(function).parameters.values()]
        assert params == entry["params"], f"{name}: slicer-core has {params}, the manifest {entry['params']}"
    for member in MANIFEST["base_classes"]["VTKObservationMixin"]["members"]:
        assert hasattr(slicer.util.VTKObservationMixin, member), member
    assert "slicer.packaging" in inspect.getsource(slicer.util.pip_install)  # 5.12: pip_install delegates to slicer.packaging


# --- the module's pip_ensure path, with stand-ins that behave as the Slicer source does -------------


@pytest.fixture()
def hv(tmp_path, monkeypatch):
    """HealthiVert.py loaded as test_scene_module loads it (slicer-core + Qt stand-ins)."""
    import test_scene_module

    yield from test_scene_module.load_module(tmp_path, monkeypatch)


def _pydeps_like(calls: list, decline: bool = False) -> types.ModuleType:
    """A module whose pip_ensure reads its requirements as slicer.pydeps.pip_check does (req.name,
    req.specifier, req.marker), so plain strings fail there exactly as in Slicer."""
    module = types.ModuleType("slicer.pydeps")

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True,
                   requester=None, skip_in_testing=True, show_progress=True):  # fmt: skip
        calls.append(([(r.name, str(r.specifier), r.marker) for r in requirements], prompt_install, requester))
        if decline:
            raise RuntimeError("User declined installation")

    module.pip_ensure = pip_ensure
    return module


@pytest.mark.parametrize("name", ["slicer.packaging", "slicer.pydeps"])
def test_slicer_api_pip_ensure_gets_requirement_objects(hv, monkeypatch, name):
    calls: list = []
    monkeypatch.setitem(sys.modules, name, _pydeps_like(calls))
    monkeypatch.setattr(sys.modules["slicer"], name.split(".")[1], sys.modules[name], raising=False)
    monkeypatch.setattr(hv.slicer.util, "pip_install", lambda *a, **k: pytest.fail("pip_install while pip_ensure exists"))
    assert hv.HealthiVertLogic._pipInstall(["safetensors>=0.4", "matplotlib>=3.7"], askUser=False) is True
    assert calls == [([("safetensors", ">=0.4", None), ("matplotlib", ">=3.7", None)], False, "HealthiVert")]


def test_slicer_api_pip_ensure_declined_installs_nothing(hv, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "slicer.packaging", _pydeps_like(calls, decline=True))
    monkeypatch.setattr(sys.modules["slicer"], "packaging", sys.modules["slicer.packaging"], raising=False)
    monkeypatch.setattr(hv.slicer.util, "pip_install", lambda *a, **k: pytest.fail("pip_install after a refusal"))
    assert hv.HealthiVertLogic._pipInstall(["safetensors>=0.4"], askUser=True) is False
    assert len(calls) == 1


def test_slicer_api_without_pip_ensure_falls_back_to_util_pip_install(hv, monkeypatch):
    for name in ("slicer.packaging", "slicer.pydeps"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.delattr(sys.modules["slicer"], name.split(".")[1], raising=False)
    installed: list = []
    monkeypatch.setattr(hv.slicer.util, "pip_install", lambda requirements: installed.append(requirements))
    monkeypatch.setattr(hv.slicer.util, "confirmOkCancelDisplay", lambda text, **kwargs: True)
    assert hv.HealthiVertLogic._pipInstall(["surely-not-installed-healthivert-test>=1", "pytest>=1"], askUser=True) is True
    assert installed == ['"surely-not-installed-healthivert-test>=1"']  # pytest is installed: not asked for


def test_slicer_api_sample_data_sources_load_as_sampledata_does(hv, monkeypatch):
    """Two sources, each one file with its own properties dict and checksum, registered once."""
    registered: list = []
    sample_data = types.ModuleType("SampleData")
    sample_data.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: registered.append(kw))
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)
    monkeypatch.setattr(hv.qt, "QUrl", types.SimpleNamespace(fromLocalFile=lambda p: types.SimpleNamespace(toString=lambda: "file://" + p)),
                        raising=False)  # fmt: skip
    monkeypatch.setattr(hv.registerSampleData, "registered", False, raising=False)
    hv.registerSampleData()
    hv.registerSampleData()
    assert [r["sampleName"] for r in registered] == list(hv.SAMPLE_NAMES)
    assert [r["loadFileProperties"] for r in registered] == [{}, {"labelmap": True}]
    for record in registered:
        assert isinstance(record["uris"], str) and isinstance(record["fileNames"], str) and isinstance(record["nodeNames"], str)
        path = Path(record["uris"].removeprefix("file://"))
        assert record["checksums"] == "SHA256:" + hashlib.sha256(path.read_bytes()).hexdigest()
