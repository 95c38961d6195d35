"""Training configs: ``sdenhance train --config CONFIG.yaml`` and ``sdenhance evaluate --config`` read them.

A config names the task, modality, degradation, training and validation scans, network, schedule and optimiser
settings (see scripts/configs/); it is checked when it loads, so a typo fails at once, not hours into a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .degrade import DENOISING, make_degradation
from .model import ModelConfig
from .schedule import ScheduleConfig


@dataclass
class TrainConfig:
    name: str
    task: str
    modality: str
    degradation: dict
    train_files: list[str]
    val_files: list[str] = field(default_factory=list)
    val_degradation: dict | None = None  # fixed level for validation; default: the training spec
    # more validation degradations, {label: spec}, scored on the same files (e.g. noise families held out of training)
    val_families: dict[str, dict] = field(default_factory=dict)
    # a degradation drawn afresh for this share of the patches, instead of cutting them from cached realisations
    patch_degradation: dict | None = None
    patch_share: float = 0.0
    # a new run starts from these weights (a shipped model's name or a .safetensors path) instead of from scratch
    init_from: str | None = None
    val_crop: list[int] | None = None  # centre crop (z, y, x) of each validation volume, None = whole
    data_root: str = "."
    realisations: int = 4
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    patch_size: tuple[int, int, int] = (16, 64, 64)
    batch_size: int = 2
    lr: float = 2e-4
    warmup_steps: int = 200
    # optional cosine decay to lr_final between two steps, e.g. to finish a run that plateaued at constant lr
    lr_decay: dict | None = None  # {start: STEP, end: STEP, final: LR}
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    max_steps: int = 10000
    log_every: int = 10
    val_every: int = 1000
    ckpt_every: int = 250
    seed: int = 0
    background: float | None = None
    # the K sampling uses by default when it differs from the trained K (one of the K values that fit it)
    sampling_steps: int | None = None
    card: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read YAML; relative data paths are resolved against the config file's folder."""
        path = Path(path)
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        raw["model"] = ModelConfig.from_dict(raw.get("model", {}))
        raw["schedule"] = ScheduleConfig(**raw.get("schedule", {}))
        raw["patch_size"] = tuple(raw.get("patch_size", cls.patch_size))
        raw["data_root"] = str((path.parent / raw.get("data_root", ".")).resolve())
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
        config = cls(**raw)
        config.check()
        return config

    def check(self) -> None:
        """Raise ValueError for settings that would only fail hours into a run (degradations, lr_decay)."""
        for spec in [self.degradation, self.val_degradation, *self.val_families.values()]:
            if spec is not None:
                make_degradation(spec)
        if self.patch_degradation is not None:
            if self.patch_degradation.get("kind") not in DENOISING:
                raise ValueError(f"patch_degradation must be a denoising kind ({', '.join(DENOISING)})")
            make_degradation(self.patch_degradation)
        if not 0.0 <= self.patch_share <= 1.0:
            raise ValueError(f"patch_share must be in [0, 1], got {self.patch_share}")
        decay = self.lr_decay
        if decay is not None and (
            set(decay) != {"start", "end", "final"} or not 0 <= decay["start"] < decay["end"] or decay["final"] < 0
        ):
            raise ValueError(f"lr_decay must be {{start: STEP, end: STEP, final: LR}} with start < end; got {decay}")

    def paths(self, names: list[str]) -> list[Path]:
        paths = [Path(self.data_root) / n for n in names]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"training data not found: {missing} (set data_root in the config)")
        return paths

    @property
    def sr_factor(self) -> int | None:
        return self.degradation.get("factor") if self.task == "sr" else None

    @property
    def sr_axis(self) -> str | None:
        return self.degradation.get("axis", "z") if self.task == "sr" else None
