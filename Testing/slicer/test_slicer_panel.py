"""The panel (.ui), the module code that drives it and the CMake file that packages them agree."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET

from sde_slicer_helpers import MODULE_DIR

UI_FILE = MODULE_DIR / "Resources" / "UI" / "SparseDiffusionEnhance.ui"
MODULE_FILE = MODULE_DIR / "SparseDiffusionEnhance.py"
#: Parameters with no SlicerParameterName widget: the model list depends on the task and is bound in code;
#: the latest result is not edited in the panel.
UNBOUND_PARAMETERS = {"checkpoint", "resultVolume"}


def uiWidgets() -> dict[str, str | None]:
    """Widget name -> its SlicerParameterName (or None)."""
    widgets = {}
    for widget in ET.parse(UI_FILE).getroot().iter("widget"):
        names = [p.findtext("string") for p in widget.findall("property") if p.get("name") == "SlicerParameterName"]
        widgets[widget.get("name")] = names[0] if names else None
    return widgets


def parameterFields() -> set[str]:
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    classes = (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))
    cls = next(n for n in classes if n.name == "SparseDiffusionEnhanceParameterNode")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_every_widget_the_code_uses_is_in_the_ui():
    used = set(re.findall(r"\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used, "the module code uses no widget: the pattern is out of date"
    assert used - set(uiWidgets()) == set()


def test_every_bound_widget_names_a_parameter_and_every_parameter_is_bound():
    bound = {param for param in uiWidgets().values() if param}
    fields = parameterFields()
    assert bound - fields == set(), "SlicerParameterName without a parameter"
    assert fields - bound == UNBOUND_PARAMETERS


def cmakeList(text: str, variable: str) -> set[str]:
    block = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S).group(1)
    return {
        line.split("#")[0].strip().replace("${MODULE_NAME}", "SparseDiffusionEnhance") for line in block.splitlines()
    } - {""}


def test_cmake_packages_every_module_file_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.glob("*.py")}
    scripts |= {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.glob("SparseDiffusionEnhanceLib/*.py")}
    resources = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    assert cmakeList(text, "MODULE_PYTHON_SCRIPTS") == scripts
    assert cmakeList(text, "MODULE_PYTHON_RESOURCES") == resources
