"""Find checkpoints by name and read their JSON cards without importing torch.

A checkpoint is two files side by side: ``NAME.safetensors`` (weights) and ``NAME.json`` (metadata and
model card). Shipped checkpoints live in this package's ``models/`` folder. This module only reads JSON so
the Slicer GUI process can list models without loading torch; for the same reason it holds the limits that the
GUI checks its settings against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

SHIPPED_DIR = Path(__file__).with_name("models")
TASKS = ("denoise", "sr")
MODALITIES = ("ct", "mri", "pet")
SR_FACTORS = (2, 4)
#: The most samples one run averages: one per flip of the three axes (``pipeline.FLIPS``).
MAX_SAMPLES = 8


@dataclass(frozen=True)
class ModelCard:
    name: str
    path: Path  # the .safetensors file
    meta: dict

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def modality(self) -> str:
        return self.meta["modality"]

    @property
    def summary(self) -> str:
        return self.meta.get("card", {}).get("summary", "")

    def describe(self) -> str:
        """One line for lists: name, task, modality, the card's summary and the input noise it was trained on."""
        extra = f" x{self.meta['sr_factor']} along {self.meta['sr_axis']}" if self.task == "sr" else ""
        noise = self.meta.get("card", {}).get("noise_range")
        trained = f" Trained on input noise {noise['low']:g}-{noise['high']:g} {noise['unit']}." if noise else ""
        return f"{self.name}: {self.modality.upper()} {self.task}{extra}. {self.summary}{trained}".strip()


def read_card(weights_path: str | Path) -> ModelCard:
    """Read and check the JSON beside ``weights_path``; raises CheckpointError with advice."""
    weights_path = Path(weights_path)
    if weights_path.suffix != ".safetensors":
        raise CheckpointError(
            f"{weights_path.name}: checkpoints are .safetensors files with a .json beside them "
            "(pickled .pt/.pth files are refused because loading them can run arbitrary code)"
        )
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint not found: {weights_path}")
    meta_path = weights_path.with_suffix(".json")
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path.name} is missing; a checkpoint needs its JSON metadata beside it")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is not valid JSON ({exc}); re-download or re-export it") from exc
    missing = [k for k in ("task", "modality", "model", "schedule", "patch_size") if k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path} lacks {', '.join(missing)}; it is not a SparseDiffusionEnhance card")
    if meta["task"] not in TASKS or meta["modality"] not in MODALITIES:
        raise CheckpointError(f"{meta_path}: unknown task/modality {meta['task']}/{meta['modality']}")
    return ModelCard(name=meta.get("name", weights_path.stem), path=weights_path, meta=meta)


def spacing_outside_range(card: ModelCard, spacing: dict[str, float]) -> str | None:
    """A warning when the voxel size the model sees (mm per axis x, y, z) is outside the range its card records
    for the training scans (``card.spacing_range_mm``); None inside it or when the card records no range."""
    trained = card.meta.get("card", {}).get("spacing_range_mm")
    if not isinstance(trained, dict):
        return None
    outside = [
        f"{axis} {spacing[axis]:g} mm (trained {low:g}-{high:g})"
        for axis, (low, high) in sorted(trained.items())
        if axis in spacing and not low <= spacing[axis] <= high
    ]
    if not outside:
        return None
    return (
        f"voxel spacing outside the range '{card.name}' was trained on: {', '.join(outside)}; "
        "the result may be poor, check it against the input with care"
    )


def list_shipped(task: str | None = None, modality: str | None = None, factor: int | None = None) -> list[ModelCard]:
    """Shipped checkpoints, optionally filtered by task, modality and SR factor, sorted by name."""
    cards = [read_card(p) for p in sorted(SHIPPED_DIR.glob("*.safetensors"))]
    return [
        c
        for c in cards
        if (task is None or c.task == task)
        and (modality is None or c.modality == modality)
        and (factor is None or c.meta.get("sr_factor") == factor)
    ]


def shipped_names(task: str | None = None, factor: int | None = None) -> str:
    """The shipped models' names for error messages, e.g. "ct-sr2, mri-sr2", or "none"."""
    return ", ".join(c.name for c in list_shipped(task, factor=factor)) or "none"


def resolve(name_or_path: str) -> ModelCard:
    """A shipped model by name (``ct-denoise``) or a path to a ``.safetensors`` file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".safetensors", ".pt", ".pth", ".ckpt") or candidate.exists():
        return read_card(candidate)
    shipped = SHIPPED_DIR / f"{name_or_path}.safetensors"
    if shipped.is_file():
        return read_card(shipped)
    raise CheckpointError(
        f"no checkpoint named '{name_or_path}' (shipped: {shipped_names()}); or give a .safetensors path"
    )


def default_for(task: str, modality: str | None, factor: int | None = None) -> ModelCard:
    """The shipped model a task uses when no checkpoint is given: the modality's (with none given, CT's, else
    MRI's, else PET's); for super-resolution the one with ``factor``, or the smallest factor when none is given."""
    for mod in [modality] if modality else MODALITIES:
        cards = list_shipped(task, mod, factor if task == "sr" else None)
        if cards:
            return min(cards, key=lambda card: card.meta.get("sr_factor", 0))
    wanted = f"{modality.upper()} {task}" if modality else task
    if task == "sr" and factor:
        wanted += f" x{factor}"
    raise CheckpointError(
        f"no shipped model for {wanted} (shipped: {shipped_names(task)}); "
        "pass --checkpoint PATH.safetensors (train one with sdenhance train)"
    )


def check_task(card: ModelCard, task: str) -> None:
    if card.task != task:
        raise CheckpointError(
            f"checkpoint '{card.name}' is a {card.task} model, not {task}; pick a {task} checkpoint "
            f"(shipped: {shipped_names(task)})"
        )


def check_factor(card: ModelCard, factor: int | None) -> None:
    """An SR checkpoint up-samples by the one factor it was trained for."""
    if factor and card.meta.get("sr_factor") != factor:
        raise CheckpointError(
            f"checkpoint '{card.name}' up-samples x{card.meta.get('sr_factor')}, not x{factor}; "
            f"pick an x{factor} checkpoint (shipped: {shipped_names('sr', factor)})"
        )


def check_fits(card: ModelCard, task: str, factor: int | None = None) -> None:
    """A checkpoint for ``task`` and, for super-resolution, ``factor`` (None: whichever it was trained for)."""
    check_task(card, task)
    if task == "sr":
        check_factor(card, factor)
