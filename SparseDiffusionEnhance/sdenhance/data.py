"""Training data: a bank of (degraded, reference) volume pairs and a MONAI patch pipeline over it.

The projection-domain CT simulator costs seconds per volume, far more than a training step, so each
training volume is degraded a few times (``realisations``: noise at levels drawn from the configured range, or
thick slices at random slab phases) and the pairs are kept in memory and cached on disk as .npz (resuming or
re-running does not decode NIfTI or re-simulate). Patches are then cut on the fly: foreground-biased random
crops, random flips on every axis and in-plane quarter turns (a mirrored or rotated body is still a plausible
body; through-plane and in-plane axes are never mixed, since slice thickness differs between them).
A degradation cheap enough to draw per patch (``patch_degradation``, e.g. image-domain noise textures) can
replace the cached realisations for a share of the patches: every such patch gets a noise never seen before,
which is what a wide, randomised degradation family needs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd, RandRotate90d

from .degrade import Degrade, as_reference, make_degradation
from .io import Volume, read_volume
from .normalize import Normalizer

#: A voxel is foreground (a crop may centre on it) when its normalised reference value exceeds this:
#: CT -500 HU (soft tissue and bone, not air or lung); PET 0.1 ~ a tenth of the body-mean uptake; MRI 5 %.
FOREGROUND = {"ct": -0.5, "pet": 0.1, "mri": 0.05}
#: Bumped whenever the pairs a cache holds would come out differently (2: CT clipped before degrading).
PREPARATION = 2


@dataclass
class Pair:
    """A training volume (reference, native units) and its degraded realisations on the same grid."""

    target: np.ndarray  # (D, H, W) reference
    images: list[np.ndarray]  # degraded model inputs, each (D, H, W)
    normalizers: list[Normalizer]  # one per realisation, fitted on it as at inference time
    spacing_zyx: tuple[float, float, float]


def load_pairs(
    paths: list[Path],
    modality: str,
    degradation: dict,
    realisations: int,
    seed: int,
    cache_dir: Path | None,
) -> list[Pair]:
    """Degrade every volume ``realisations`` times (seeded); cached on disk as one .npz per volume."""
    degrade = make_degradation(degradation)
    pairs = []
    for index, path in enumerate(paths):
        key = _cache_key(path, degradation, seed, realisations)
        pair = _read_cache(cache_dir, key, modality)
        if pair is None:
            volume = as_reference(read_volume(path), modality)
            runs = [degrade(volume, np.random.default_rng([seed, index, r])) for r in range(realisations)]
            images = [degraded.array for degraded, _ in runs]
            reference = runs[0][1]
            pair = Pair(
                target=reference.array,
                images=images,
                normalizers=[Normalizer.fit(image, modality) for image in images],
                spacing_zyx=tuple(reversed(reference.spacing)),
            )
            _write_cache(cache_dir, key, pair)
        pairs.append(pair)
    return pairs


def _cache_key(path: Path, degradation: dict, seed: int, realisations: int) -> str:
    stat = path.stat()
    text = json.dumps([path.name, stat.st_size, degradation, seed, realisations, PREPARATION], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _read_cache(cache_dir: Path | None, key: str, modality: str) -> Pair | None:
    if cache_dir is None or not (cache_dir / f"{key}.npz").is_file():
        return None
    with np.load(cache_dir / f"{key}.npz") as z:
        images = list(z["images"])
        return Pair(
            target=z["target"],
            images=images,
            normalizers=[Normalizer.fit(image, modality) for image in images],
            spacing_zyx=tuple(float(s) for s in z["spacing"]),
        )


def _write_cache(cache_dir: Path | None, key: str, pair: Pair) -> None:
    if cache_dir is None:
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f"{key}.{os.getpid()}.partial.npz"  # DDP ranks may write the same entry at once
    np.savez(tmp, target=pair.target, images=np.stack(pair.images), spacing=np.array(pair.spacing_zyx))
    tmp.replace(cache_dir / f"{key}.npz")


class PatchSampler:
    """Endless random training patches from a list of pairs (seeded; its whole state can be saved).

    With ``patch_degradation``, a share ``patch_share`` of the patches are cut from the reference and degraded
    on the spot (normalised as the reference is) instead of being cut from a cached realisation.
    """

    def __init__(
        self,
        pairs: list[Pair],
        patch_size: tuple[int, int, int],
        modality: str,
        seed: int,
        fg_ratio=0.9,
        patch_degradation: Degrade | None = None,
        patch_share: float = 0.0,
    ):
        self.pairs = pairs
        self.rng = np.random.default_rng(seed)
        self.patch_degradation = patch_degradation
        self.patch_share = patch_share if patch_degradation is not None else 0.0
        # fitted only when some patches are degraded on the spot (MRI/PET fits are percentiles of whole scans)
        self.reference_normalizers = [Normalizer.fit(p.target, modality) for p in pairs] if self.patch_share else []
        # crops centre on the reference's foreground (90 %) so few patches are only air
        threshold = FOREGROUND[modality]
        self.indices = []
        for pair in pairs:
            foreground = pair.normalizers[0].forward(pair.target).ravel() > threshold
            self.indices.append((np.flatnonzero(foreground), np.flatnonzero(~foreground)))
        keys = ["image", "target"]
        transforms = [
            RandCropByPosNegLabeld(
                keys=keys,
                label_key="target",
                spatial_size=patch_size,
                pos=fg_ratio,
                neg=1 - fg_ratio,
                num_samples=1,
                fg_indices_key="fg",
                bg_indices_key="bg",
            ),
            *(RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)),
        ]
        if patch_size[1] == patch_size[2]:
            transforms.append(RandRotate90d(keys, prob=0.5, spatial_axes=(1, 2)))
        self.transform = Compose(transforms)

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        """``{"image", "target": (B, 1, D, H, W), "spacing": (B, 3)}``, normalised for the model."""
        images, targets, spacings = [], [], []
        # MONAI transforms keep private RNGs (some nested); re-seeding them from ours per batch makes our
        # generator the only state to save for an exact resume
        self.transform.set_random_state(seed=int(self.rng.integers(2**31)))
        for i in self.rng.integers(len(self.pairs), size=size):
            pair = self.pairs[i]
            fresh = self.patch_share > 0 and self.rng.random() < self.patch_share
            r = int(self.rng.integers(len(pair.images)))
            fg, bg = self.indices[i]
            image = pair.target if fresh else pair.images[r]
            sample = self.transform({"image": image[None], "target": pair.target[None], "fg": fg, "bg": bg})[0]
            target = np.asarray(sample["target"])
            if fresh:
                image = self._degrade_patch(target[0], pair.spacing_zyx)[None]
                normalizer = self.reference_normalizers[i]
            else:
                image, normalizer = np.asarray(sample["image"]), pair.normalizers[r]
            images.append(torch.as_tensor(normalizer.forward(image)))
            targets.append(torch.as_tensor(normalizer.forward(target)))
            spacings.append(pair.spacing_zyx)
        return {
            "image": torch.stack(images),
            "target": torch.stack(targets),
            "spacing": torch.tensor(spacings, dtype=torch.float32),
        }

    def _degrade_patch(self, patch: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
        degraded, _ = self.patch_degradation(Volume(patch, tuple(reversed(spacing_zyx))), self.rng)
        return degraded.array

    def state(self) -> dict:
        """The patch stream's whole random state, as plain Python values (safe to store)."""
        return self.rng.bit_generator.state

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state
