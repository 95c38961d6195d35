"""Python packages the worker needs in Slicer's Python, checked from package metadata (nothing is imported).

Installing is only ever done after the user agreed, from an explicit call (never at module import): torch
with light-the-torch, which picks the build matching the GPU driver (the PyTorch extension's method, but in
a process of its own: the extension imports torch into Slicer), the rest through
``slicer.packaging.pip_ensure`` (Slicer 5.12 and later) or ``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path

from packaging.requirements import Requirement

from .worker import launchEngine

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"
#: What a run on a processing server needs here instead: only the client's HTTP library (Slicer ships it).
CLIENT_REQUIREMENTS = (Requirement("requests>=2.31"),)


def readRequirements(path: Path = REQUIREMENTS_FILE) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [Requirement(line) for line in lines if line]


def isSatisfied(requirement: Requirement) -> bool:
    try:
        version = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return requirement.specifier.contains(version, prereleases=True)


def missingRequirements(requirements: list[Requirement]) -> list[Requirement]:
    return [r for r in requirements if not isSatisfied(r)]


def installPlan(missing: list[Requirement]) -> list[tuple[str, list[Requirement]]]:
    """The install steps for ``missing``: (what to tell the user meanwhile, requirements), torch first."""
    torch = [r for r in missing if r.name == "torch"]
    others = [r for r in missing if r.name != "torch"]
    steps = []
    if torch:
        steps.append(("Installing PyTorch (a download of up to a few GB: this can take many minutes)…", torch))
    if others:
        names = ", ".join(r.name for r in others)
        steps.append((f"Installing {names} (this can take a few minutes)…", others))
    return steps


def ensureDependencies(
    confirm: Callable[[str], bool],
    requirements: list[Requirement] | None = None,
    onStatus: Callable[[str], None] | None = None,
) -> bool:
    """Install what is missing if ``confirm(question)`` agrees, telling ``onStatus`` what each step does;
    True when everything is then present."""
    requirements = readRequirements() if requirements is None else requirements
    missing = missingRequirements(requirements)
    if not missing:
        return True
    names = ", ".join(str(r) for r in missing)
    question = (
        f"Sparse Diffusion Enhance needs these Python packages in Slicer: {names}.\n\n"
        "Download and install them now? This can take several minutes (PyTorch is large)."
    )
    if not confirm(question):
        logging.info("Installation of %s declined", names)
        return False
    for status, group in installPlan(missing):
        logging.info(status)
        if onStatus:
            onStatus(status)
        if group[0].name == "torch":
            installTorch(group[0])
        else:
            installPackages(group)
    return not missingRequirements(requirements)


def installTorch(requirement: Requirement) -> None:
    """PyTorch through light-the-torch, run as PythonSlicer's own process: torch is never imported here."""
    import slicer

    slicer.util.pip_install("light-the-torch>=0.5")
    slicer.util.logProcessOutput(launchEngine(["-m", "light_the_torch", "install", str(requirement)]))


def installPackages(requirements: list[Requirement]) -> None:
    import slicer

    if importlib.util.find_spec("slicer.packaging") is not None:
        import slicer.packaging

        slicer.packaging.pip_ensure(requirements, prompt_install=False, requester="SparseDiffusionEnhance")
    else:
        slicer.util.pip_install([str(r) for r in requirements])
