"""Checkpoints: weights in safetensors plus a JSON file with everything needed to use them.

Loading never unpickles: safetensors holds only tensors, and the JSON is validated before any weight is
read, so a wrong or corrupt file fails with a message instead of a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import CheckpointError
from .model import ModelConfig, SparseDiffusionUNet
from .registry import ModelCard, read_card
from .schedule import NoiseSchedule, ScheduleConfig

FORMAT_VERSION = 1


def build_meta(
    *,
    name: str,
    task: str,
    modality: str,
    model: ModelConfig,
    schedule: ScheduleConfig,
    patch_size: tuple[int, int, int],
    sr_factor: int | None = None,
    sr_axis: str | None = None,
    background: float | None = None,
    sampling_steps: int | None = None,
    training: dict | None = None,
    card: dict | None = None,
) -> dict:
    """The JSON metadata of a checkpoint (architecture, task, schedule, sampling defaults, model card)."""
    return {
        "name": name,
        "format_version": FORMAT_VERSION,
        "engine_version": __version__,
        "task": task,
        "modality": modality,
        "sr_factor": sr_factor,
        "sr_axis": sr_axis,
        "model": model.to_dict(),
        "schedule": vars(schedule).copy(),
        "patch_size": list(patch_size),
        "background": background,
        "sampling_steps": sampling_steps,
        "training": training or {},
        "card": card or {},
    }


def save_checkpoint(model: torch.nn.Module, meta: dict, weights_path: str | Path) -> Path:
    """Write NAME.safetensors and NAME.json (each atomically: a crash never leaves a half-written pair)."""
    weights_path = Path(weights_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = weights_path.with_name(weights_path.name + ".partial")
    save_file(tensors, str(tmp), metadata={"engine_version": __version__})
    os.replace(tmp, weights_path)
    meta_path = weights_path.with_suffix(".json")
    tmp_meta = meta_path.with_name(meta_path.name + ".partial")
    tmp_meta.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp_meta, meta_path)
    return weights_path


def load_model(
    card: ModelCard | str | Path, device: torch.device | str = "cpu"
) -> tuple[SparseDiffusionUNet, ModelCard]:
    """Build the network described by the card and load its weights (eval mode, on ``device``)."""
    if not isinstance(card, ModelCard):
        card = read_card(card)
    try:
        model = SparseDiffusionUNet(ModelConfig.from_dict(card.meta["model"]))
    except TypeError as exc:
        raise CheckpointError(f"{card.name}: unknown model settings in its JSON ({exc})") from exc
    try:
        weights = load_file(str(card.path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{card.path} is corrupt or not a safetensors file ({exc}); re-download it") from exc
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{card.path}: weights do not match the architecture in its JSON") from exc
    return model.to(device).eval(), card


def schedule_of(card: ModelCard) -> NoiseSchedule:
    return NoiseSchedule(ScheduleConfig(**card.meta["schedule"]))
