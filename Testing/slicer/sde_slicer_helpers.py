"""Shared helpers of the headless Slicer-module tests (a unique name: other test folders have a conftest too)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "SparseDiffusionEnhance"
# as inside Slicer: the module's folder, with the Lib and the engine package in it, is on sys.path
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

SLICER_CORE_MISSING = "slicer-core is not installed (pip install slicer-core==5.13.31053.0)"


def obliqueMatrix(spacing=(0.8, 0.6, 2.5), origin=(12.5, -30.25, 41.0)) -> np.ndarray:
    """IJK-to-RAS rotated 30 degrees about S and 45 about R, anisotropic spacing, off-centre origin."""
    a, b = np.radians(30), np.radians(45)
    aboutS = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aboutR = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    matrix = np.eye(4)
    matrix[:3, :3] = aboutS @ aboutR @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def syntheticArray(shape=(10, 14, 12), seed=0) -> np.ndarray:
    """A smooth blob with noise, as int16 like a CT."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    blob = 800.0 * np.exp(-(xx**2 + yy**2 + zz**2) * 3) - 500.0
    return (blob + rng.normal(0, 40, shape)).astype(np.int16)


def ijkToRAS(volumeNode) -> np.ndarray:
    import slicer
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def voxelCornersRAS(volumeNode) -> np.ndarray:
    """RAS position of the 8 outer corners of the voxel grid (voxel edges, not centres)."""
    dims = volumeNode.GetImageData().GetDimensions()
    corners = np.array(
        [[i, j, k, 1.0] for i in (-0.5, dims[0] - 0.5) for j in (-0.5, dims[1] - 0.5) for k in (-0.5, dims[2] - 0.5)]
    )
    return (ijkToRAS(volumeNode) @ corners.T).T[:, :3]
