"""Dependency checks: from metadata only, nothing installed without the user's agreement."""

from __future__ import annotations

import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from sde_slicer_helpers import REPO, SLICER_CORE_MISSING

pytest.importorskip("slicer", reason=SLICER_CORE_MISSING)

from SparseDiffusionEnhanceLib import (  # noqa: E402
    ensureDependencies,
    installPlan,
    missingRequirements,
    readRequirements,
)


def test_module_requirements_match_the_engine_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    specifiers = {r.name: r.specifier for r in declared}
    required = readRequirements()
    assert {"torch", "monai", "safetensors", "psutil"} <= {r.name for r in required}
    for requirement in required:
        assert requirement.specifier == specifiers[requirement.name], f"{requirement} differs from pyproject.toml"


def test_missing_requirements_are_found_from_metadata():
    present = Requirement("packaging>=1")
    tooOld = Requirement("packaging>=999")
    absent = Requirement("sdenhance-no-such-distribution")
    assert missingRequirements([present, tooOld, absent]) == [tooOld, absent]


def test_nothing_is_asked_when_everything_is_installed():
    def confirm(question):
        raise AssertionError("asked although nothing is missing")

    assert ensureDependencies(confirm, [Requirement("packaging>=1")], onStatus=confirm)


def test_declining_installs_nothing():
    questions = []
    absent = Requirement("sdenhance-no-such-distribution>=1")
    modulesBefore = set(sys.modules)

    statuses = []
    assert not ensureDependencies(
        lambda q: questions.append(q) or False, [absent, Requirement("packaging")], onStatus=statuses.append
    )

    assert len(questions) == 1 and "sdenhance-no-such-distribution>=1" in questions[0]
    assert "packaging" not in questions[0].split(":", 1)[1]  # only what is missing is offered
    assert statuses == []  # nothing is said to be installing
    assert not {"torch", "PyTorchUtils", "slicer.packaging"} & (set(sys.modules) - modulesBefore)


def test_the_install_steps_say_what_is_being_installed_torch_first():
    steps = installPlan([Requirement("monai>=1.4"), Requirement("torch>=2.2"), Requirement("psutil>=5.9")])
    assert [[str(r) for r in group] for _, group in steps] == [["torch>=2.2"], ["monai>=1.4", "psutil>=5.9"]]
    assert "PyTorch" in steps[0][0] and "many minutes" in steps[0][0]
    assert "monai, psutil" in steps[1][0]
    assert [group for _, group in installPlan([Requirement("safetensors")])] == [[Requirement("safetensors")]]
    assert installPlan([]) == []
