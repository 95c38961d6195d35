"""Error types and exit codes of every ``sdenhance`` command, and the one rule that maps the first to the second.

Torch-free and numpy-free: the Slicer worker imports ``EXIT_KINDS`` from here to explain an exit code.
"""

from __future__ import annotations

import importlib
import signal

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_CHECKPOINT, EXIT_MEMORY, EXIT_SERVER = 0, 1, 2, 3, 4, 5
#: What each non-zero exit code means (0 is success); "server": a processing server refused or was lost.
EXIT_KINDS: dict[int, str] = {1: "internal", 2: "input", 3: "checkpoint", 4: "memory", 5: "server"}
#: The shell's convention for a process ended by SIGTERM (the Slicer worker's Cancel).
EXIT_TERMINATED = 128 + signal.SIGTERM

OUT_OF_MEMORY_ADVICE = "out of memory: use --device cpu, a smaller --batch or a smaller --patch"
#: Optional packages by pip extra: the engine runs without them, these commands do not.
EXTRAS = {
    "eval": ("matplotlib", "pywt"),
    "dicom": ("pydicom",),
    "server": ("fastapi", "uvicorn"),
    "client": ("requests",),
}
#: OS errors about a path the user gave (missing, existing, not writable): input problems, not bugs.
USER_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


class EngineError(Exception):
    """A problem the user can fix; the message says what to do."""

    exit_code = EXIT_INTERNAL


class InputError(EngineError, ValueError):
    """A bad input file, volume or command-line option."""

    exit_code = EXIT_INPUT


class VolumeError(InputError):
    """An input volume that cannot be enhanced."""


class CheckpointError(EngineError, ValueError):
    """A checkpoint that is missing, corrupt or unsuitable."""

    exit_code = EXIT_CHECKPOINT


class Terminated(EngineError):
    """The process received SIGTERM (raised by the command line's handler so that clean-up runs)."""

    exit_code = EXIT_TERMINATED


def require(extra: str) -> None:
    """Refuse, before any work, a command whose optional packages are not installed, naming the pip extra."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise InputError(f"this needs {', '.join(missing)}, which is not installed: pip install 'sdenhance[{extra}]'")


def classify(exc: BaseException) -> tuple[int, str, str]:
    """(exit code, kind, message) for an exception that ended a command."""
    if isinstance(exc, EngineError):
        code = exc.exit_code
    elif isinstance(exc, USER_PATH_ERRORS):
        code = EXIT_INPUT
    elif isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()):
        return EXIT_MEMORY, EXIT_KINDS[EXIT_MEMORY], OUT_OF_MEMORY_ADVICE
    else:
        return EXIT_INTERNAL, EXIT_KINDS[EXIT_INTERNAL], f"{type(exc).__name__}: {exc}"
    return code, EXIT_KINDS.get(code, "cancelled"), str(exc)
