"""The module file and the Lib as Slicer imports them: on an old Slicer, at start-up, and on Reload."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap

import pytest
from sde_slicer_helpers import MODULE_DIR, SLICER_CORE_MISSING

MODULE_FILE = MODULE_DIR / "SparseDiffusionEnhance.py"


def python39() -> str | None:
    """A working Python 3.9 (the Python of Slicer 5.6 and 5.8), or None; a pyenv shim may exist but not run."""
    python = shutil.which("python3.9")
    if python is None:
        return None
    probe = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    return python if probe.stdout.strip() == "(3, 9)" else None


PYTHON39 = python39()

#: Just enough of Slicer 5.8's Python API for the module file's top level: what the file needs from the
#: application before it knows that the application is too old (the real one is not available here).
SLICER_58_STAND_INS = {
    "qt.py": "",
    "vtk.py": "",
    "numpy.py": "",
    "slicer/__init__.py": """
        class _Application:
            majorVersion, minorVersion = 5, 8
            def connect(self, *args):
                raise AssertionError("an unsupported Slicer gets no sample data and no start-up hooks")
        app = _Application()
        class vtkMRMLScalarVolumeNode:
            pass
    """,
    "slicer/i18n.py": """
        def tr(text):
            return text
        def translate(context, text):
            return text
    """,
    "slicer/util.py": "class VTKObservationMixin:\n    pass\n",
    "slicer/ScriptedLoadableModule.py": """
        import unittest
        class ScriptedLoadableModule:
            def __init__(self, parent):
                self.parent = parent
        class ScriptedLoadableModuleWidget:
            pass
        class ScriptedLoadableModuleLogic:
            pass
        class ScriptedLoadableModuleTest(unittest.TestCase):
            pass
    """,
}


def test_the_module_file_defers_evaluation_of_annotations():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    first = tree.body[0]
    assert isinstance(first, ast.ImportFrom) and first.module == "__future__"
    assert [alias.name for alias in first.names] == ["annotations"]


@pytest.mark.skipif(PYTHON39 is None, reason="needs python3.9 on PATH (the Python of Slicer 5.6 and 5.8)")
def test_on_slicer_5_8_the_module_loads_and_says_it_needs_5_10(tmp_path):
    for name, text in SLICER_58_STAND_INS.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    check = f"""
import sys
sys.path[:0] = [{str(tmp_path)!r}, {str(MODULE_DIR)!r}]
import SparseDiffusionEnhance as module

class Parent:
    pass

parent = Parent()
module.SparseDiffusionEnhance(parent)
assert "needs Slicer 5.10 or newer; this is Slicer 5.8" in parent.helpText, parent.helpText
assert module.UNSUPPORTED.startswith("Sparse Diffusion Enhance needs Slicer 5.10 or newer")
assert hasattr(module, "SparseDiffusionEnhanceWidget") and hasattr(module, "SparseDiffusionEnhanceTest")
assert not hasattr(module, "SparseDiffusionEnhanceParameterNode")
assert not [name for name in sys.modules if name.startswith(("SparseDiffusionEnhanceLib", "sdenhance"))]
print("ok")
"""
    result = subprocess.run([PYTHON39, "-c", check], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_importing_the_lib_loads_neither_torch_nor_simpleitk():
    pytest.importorskip("slicer", reason=SLICER_CORE_MISSING)
    check = f"""
import sys
sys.path.insert(0, {str(MODULE_DIR)!r})
import SparseDiffusionEnhanceLib
print(sorted(m for m in ("torch", "monai", "SimpleITK", "sdenhance.io", "scipy") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def libAndEngineModules() -> dict:
    return {name: m for name, m in sys.modules.items() if name.startswith(("SparseDiffusionEnhanceLib", "sdenhance"))}


def test_forgetting_the_imports_makes_reload_read_the_lib_and_engine_afresh():
    pytest.importorskip("slicer", reason=SLICER_CORE_MISSING)
    import SparseDiffusionEnhanceLib
    import SparseDiffusionEnhanceLib.worker

    before = libAndEngineModules()
    try:
        SparseDiffusionEnhanceLib.forgetImports()
        assert libAndEngineModules() == {}

        import SparseDiffusionEnhanceLib.worker as newWorker

        assert newWorker is not before["SparseDiffusionEnhanceLib.worker"]
        assert sys.modules["SparseDiffusionEnhanceLib"].WorkerProcess is newWorker.WorkerProcess
    finally:  # the other tests hold the modules imported first
        for name in libAndEngineModules():
            del sys.modules[name]
        sys.modules.update(before)
