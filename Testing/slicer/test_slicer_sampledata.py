"""The Sample Data entry: a low-dose CT phantom made on the spot by the worker's Python, nothing downloaded."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from sde_slicer_helpers import SLICER_CORE_MISSING

slicer = pytest.importorskip("slicer", reason=SLICER_CORE_MISSING)
pytest.importorskip("scipy")

from SparseDiffusionEnhanceLib import SAMPLE_NAME, loadLowDosePhantom  # noqa: E402


def test_the_sample_is_a_noisy_ct_phantom_made_locally(scene, tmp_path):
    node = loadLowDosePhantom(scene, tempRoot=str(tmp_path), python=sys.executable)

    assert node.GetName() == SAMPLE_NAME and node.GetScene() is scene
    hu = slicer.util.arrayFromVolume(node)
    assert hu.dtype == np.int16 and hu.shape == (24, 384, 384)  # the phantom of ``sdenhance demo``
    assert hu.min() >= -1024 and hu.max() > 300  # air around, bone inside: Hounsfield units
    assert node.GetSpacing() == pytest.approx((0.9, 0.9, 2.5))
    body = hu[:, 150:230, 150:230]  # soft tissue in the middle: the dose simulation put noise in it
    assert 2 < float(np.std(np.diff(body.astype(np.float32), axis=2))) < 200
    display = node.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (400, 40)
    assert os.listdir(tmp_path) == []  # the generated file is not left behind
    assert scene.GetNodesByClass("vtkMRMLStorageNode").GetNumberOfItems() == 0


def test_a_failed_generation_says_why_and_adds_nothing(scene, tmp_path):
    broken = tmp_path / "python"  # a Python that fails the way a broken install would
    broken.write_text("#!/bin/sh\necho no numpy here >&2\nexit 3\n")
    broken.chmod(0o755)
    nodesBefore = scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError, match="(?s)exit code 3.*no numpy here"):
        loadLowDosePhantom(scene, tempRoot=str(tmp_path), python=str(broken))
    assert scene.GetNumberOfNodes() == nodesBefore
