"""One rule maps every command's errors to an exit code; the module holding it loads without torch, and the
engine's modules import each other without a cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from sdenhance.cli import main
from sdenhance.errors import (
    EXIT_CHECKPOINT,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_KINDS,
    EXIT_MEMORY,
    EXIT_TERMINATED,
    CheckpointError,
    Terminated,
    VolumeError,
    classify,
)

PACKAGE = Path(__file__).resolve().parents[2] / "SparseDiffusionEnhance" / "sdenhance"


@pytest.mark.parametrize(
    "exc, code, kind",
    [
        (VolumeError("2D"), EXIT_INPUT, "input"),
        (FileExistsError("out exists"), EXIT_INPUT, "input"),
        (CheckpointError("corrupt"), EXIT_CHECKPOINT, "checkpoint"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), EXIT_MEMORY, "memory"),
        (MemoryError(), EXIT_MEMORY, "memory"),
        (Terminated("terminated"), EXIT_TERMINATED, "cancelled"),
        (RuntimeError("shapes do not match"), EXIT_INTERNAL, "internal"),
        (ValueError("a bug"), EXIT_INTERNAL, "internal"),
    ],
)
def test_every_error_maps_to_one_exit_code_and_kind(exc, code, kind):
    assert classify(exc)[:2] == (code, kind)
    assert EXIT_KINDS.get(code, "cancelled") == kind


def test_train_errors_end_with_an_exit_code_not_a_traceback(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "cannot use config" in err and "Traceback" not in err


def test_an_unexpected_error_exits_1_with_its_traceback(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise KeyError("planted")

    monkeypatch.setattr("sdenhance.cli.list_shipped", broken)
    assert main(["models"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback" in err and "error: KeyError: 'planted'" in err


def test_the_errors_module_loads_without_torch_or_numpy():
    code = "import sys, sdenhance.errors; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _imports(path: Path) -> set[str]:
    """The sdenhance modules a module imports (relative imports, at any depth in the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {node.module} if node.module else {alias.name for alias in node.names}
    return names - {"__version__"}


def test_engine_modules_import_each_other_without_a_cycle():
    graph = {p.stem: _imports(p) for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    done, stack = set(), []

    def visit(name):
        assert name not in stack, f"import cycle: {' -> '.join([*stack[stack.index(name) :], name])}"
        if name in done:
            return
        stack.append(name)
        for imported in graph.get(name, ()):
            visit(imported)
        stack.pop()
        done.add(name)

    for name in graph:
        visit(name)


@pytest.mark.parametrize("command", [["demo", "--fast"], ["evaluate", "scan.nii.gz", "--degradation", "ct25"]])
def test_commands_that_need_the_eval_extra_say_how_to_install_it(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "pywt", None)  # as if PyWavelets were not installed
    assert main(command) == EXIT_INPUT
    assert "this needs pywt, which is not installed: pip install 'sdenhance[eval]'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
