"""A procedural 3D CT phantom of a torso, in Hounsfield units, for the demo and for tests.

Body outline with a fat layer, two lungs with branching vessels, a liver-like organ with small low-contrast
lesions, a spine of vertebrae with cortical shells, ribs and mild soft-tissue texture: enough structure at
several contrasts (lesions of 10-30 HU, vessels in lung, bone edges) to show what denoising keeps and loses.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .io import Volume


def _ellipsoid(grid, centre, radii) -> np.ndarray:
    z, y, x = grid
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((x - centre[2]) / radii[2]) ** 2


def torso_phantom(
    shape: tuple[int, int, int] = (48, 192, 192),
    spacing: tuple[float, float, float] = (0.9, 0.9, 2.5),
    seed: int = 0,
) -> Volume:
    """A (z, y, x) int16 HU volume; ``spacing`` is (x, y, z) mm as in SimpleITK."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    # coordinates in mm, centred, so anatomy keeps its physical size whatever the grid
    grid = np.meshgrid(
        (np.arange(nz) - nz / 2) * spacing[2],
        (np.arange(ny) - ny / 2) * spacing[1],
        (np.arange(nx) - nx / 2) * spacing[0],
        indexing="ij",
        sparse=True,
    )
    half_y, half_x = ny * spacing[1] / 2, nx * spacing[0] / 2
    body_r = (1e9, 0.80 * half_y, 0.92 * half_x)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[_ellipsoid(grid, (0, 0, 0), body_r) <= 1] = -100.0  # subcutaneous fat
    hu[_ellipsoid(grid, (0, 0, 0), (1e9, body_r[1] - 12, body_r[2] - 12)) <= 1] = 40.0  # muscle / soft tissue
    hu += _texture(shape, rng, sigma=2.0, amplitude=8.0) * (hu > -500)
    for side in (-1, 1):  # lungs with vessels
        lung = _ellipsoid(grid, (0, -0.2 * half_y, side * 0.42 * half_x), (1e9, 0.42 * half_y, 0.3 * half_x)) <= 1
        hu[lung] = -850.0
        vessels = _vessels(shape, rng, count=25) & lung
        hu[vessels] = 30.0
    liver = _ellipsoid(grid, (0, 0.3 * half_y, -0.4 * half_x), (1e9, 0.22 * half_y, 0.3 * half_x)) <= 1
    hu[liver] = 60.0 + _texture(shape, rng, sigma=3.0, amplitude=5.0)[liver]
    for contrast, radius in ((-30.0, 6.0), (-15.0, 8.0), (25.0, 5.0)):  # small low-contrast lesions
        centre = (
            rng.uniform(-0.3, 0.3) * nz * spacing[2],
            0.3 * half_y + rng.uniform(-8, 8),
            -0.4 * half_x + rng.uniform(-15, 15),
        )
        hu[(_ellipsoid(grid, centre, (radius, radius, radius)) <= 1) & liver] += contrast
    _add_spine_and_ribs(hu, grid, half_y, half_x, nz * spacing[2])
    return Volume(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), spacing)


def _texture(shape, rng, sigma: float, amplitude: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / (field.std() + 1e-6) * amplitude


def _vessels(shape, rng, count: int) -> np.ndarray:
    """Thin tubes running mostly through-plane, with gentle in-plane drift."""
    nz, ny, nx = shape
    mask = np.zeros(shape, dtype=bool)
    yy, xx = np.ogrid[:ny, :nx]
    for _ in range(count):
        y0, x0 = rng.uniform(0.2, 0.8) * ny, rng.uniform(0.15, 0.85) * nx
        dy, dx = rng.normal(0, 0.15, size=2)
        radius = rng.uniform(1.0, 2.5)
        for z in range(nz):
            mask[z] |= (yy - (y0 + dy * z)) ** 2 + (xx - (x0 + dx * z)) ** 2 <= radius**2
    return mask


def _add_spine_and_ribs(hu, grid, half_y, half_x, length_z) -> None:
    z, y, x = grid
    vertebra_pitch = 28.0  # mm between vertebral bodies, with discs in between
    in_body = (np.mod(z + length_z / 2, vertebra_pitch) < vertebra_pitch - 6).astype(bool)
    r = np.sqrt((y - 0.6 * half_y) ** 2 + x**2)
    hu[np.broadcast_to((r <= 16) & in_body, hu.shape)] = 250.0  # cancellous bone
    hu[np.broadcast_to((r > 13) & (r <= 16) & in_body, hu.shape)] = 900.0  # cortical shell
    ring = np.sqrt((y / (0.74 * half_y)) ** 2 + (x / (0.86 * half_x)) ** 2)
    ribs = (np.abs(ring - 1.0) < 0.025) & (np.mod(z + length_z / 2, 24.0) < 9.0) & (y < 0.5 * half_y)
    hu[np.broadcast_to(ribs, hu.shape)] = 700.0
