"""Copy a trained run's checkpoint into the package's shipped models, completing its model card.

    python scripts/ship_model.py runs/ct-denoise [--evaluation eval/results.json] [--suite eval-robust/suite.json]
    python scripts/ship_model.py --refresh-noise-range ct-denoise   # only re-measure a shipped card's noise range

The card gets: training scans with their licences (from the data MANIFEST.md), the degradation and its
parameter range, the voxel spacing range seen in training, the noise range of the training inputs as
``sdenhance.noise`` estimates it (denoising; what ``enhance`` warns against), K, the normalisation, the
validation metrics the trainer measured (and the evaluation table and robustness suite when given), and the
summary and known limits written in the training config's card.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml
from sdenhance.degrade import DENOISING, make_degradation
from sdenhance.io import read_volume
from sdenhance.noise import estimate_noise, estimated_slices
from sdenhance.normalize import __doc__ as NORMALISATION_DOC
from sdenhance.registry import SHIPPED_DIR, read_card

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DATA_MANIFEST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "MANIFEST.md"


def licences(files: list[str], manifest: Path) -> dict[str, str]:
    """The licence column of the manifest's table row for each training file."""
    rows = {}
    if manifest.is_file():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 4:
                rows[cells[0]] = cells[3]
    return {f: rows.get(f, "see the data manifest") for f in files}


def normalisation_text(modality: str) -> str:
    prefix = {"ct": "- CT:", "mri": "- MRI:", "pet": "- PET:"}[modality]
    lines = NORMALISATION_DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(prefix))
    text = [lines[start][2:]]
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        text.append(line.strip())
    return " ".join(text)


def spacing_range(spacings: list[list[float]]) -> dict[str, list[float]]:
    """Min and max voxel size (mm) per axis over the training volumes."""
    axes = list(zip(*spacings, strict=True))
    return {name: [round(min(a), 3), round(max(a), 3)] for name, a in zip("zyx", axes, strict=True)}


def level_ends(spec: dict) -> list[dict]:
    """The spec at the lowest and the highest level of its range (a fixed level: the spec itself)."""
    key = DENOISING[spec["kind"]][0]
    levels = spec[key] if isinstance(spec[key], list) else [spec[key]]
    return [spec | {key: level} for level in levels]


def noise_range(config_path: Path) -> dict | None:
    """Lowest and highest noise estimate over the training scans degraded at the ends of each training
    degradation's range: the inputs the model has seen. None for super-resolution."""
    from sdenhance.config import TrainConfig

    config = TrainConfig.load(config_path)
    if config.task != "denoise":
        return None
    specs = [s for spec in (config.degradation, config.patch_degradation) if spec for s in level_ends(spec)]
    estimates = []
    for index, path in enumerate(config.paths(config.train_files)):
        volume = read_volume(path)
        volume = volume.with_array(volume.array.astype(np.float32))
        if config.modality == "ct":  # CT noise is simulated slice by slice: only the slices the estimate reads
            volume = replace(volume, array=volume.array[estimated_slices(volume.array.shape[0])])
        for spec in specs:
            degraded, _ = make_degradation(spec)(volume, np.random.default_rng(index))
            estimate = estimate_noise(degraded.array, config.modality)
            print(f"  {path.name} {spec}: {estimate}")
            estimates.append(estimate)
    values = [e.value for e in estimates if np.isfinite(e.value)]
    return {"low": round(min(values), 1), "high": round(max(values), 1), "unit": estimates[0].unit}


def config_card(name: str) -> dict:
    """The card section of the model's training config: edited there (e.g. known limits) after training."""
    path = CONFIG_DIR / f"{name}.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")).get("card", {}) if path.is_file() else {}


def portable(evaluation: dict, data_root: Path) -> dict:
    """The evaluation without this machine's paths: each scan relative to the data folder (as the configs name
    them), the checkpoint by name only (it is the model the card belongs to)."""

    def relative(source: str) -> str:
        path = Path(source)
        return path.relative_to(data_root).as_posix() if path.is_relative_to(data_root) else path.name

    cases = [case | {"source": relative(case["source"])} for case in evaluation.get("cases", [])]
    checkpoint = {k: v for k, v in evaluation.get("checkpoint", {}).items() if k != "path"}
    return evaluation | {"cases": cases, "checkpoint": checkpoint}


def complete_card(meta: dict, evaluation: dict | None, suite: dict | None = None) -> dict:
    training = meta["training"]
    card = dict(meta.get("card", {})) | config_card(meta["name"])
    card |= {
        "task": meta["task"],
        "modality": meta["modality"],
        "training_scans": licences(training["train_files"], DATA_MANIFEST),
        "validation_scans": training["val_files"],
        "degradation": training["degradation"],
        "patch_degradation": training.get("patch_degradation"),  # drawn afresh for patch_share of the patches
        "patch_share": training.get("patch_share", 0.0),
        "spacing_range_mm": spacing_range(training["spacing_zyx"]),
        "noise_range": noise_range(CONFIG_DIR / f"{meta['name']}.yaml"),
        "sparse_steps_K": meta["schedule"]["steps"],
        "timesteps_T": meta["schedule"]["timesteps"],
        "normalisation": normalisation_text(meta["modality"]),
        "training_steps": training["steps"],
        "validation_metrics": training["validation"],
    }
    if evaluation is not None:
        card["evaluation"] = portable(evaluation, DATA_MANIFEST.parent.resolve())
    if suite is not None:  # rows name scans and families only: nothing of this machine's paths
        card["robustness_suite"] = suite
    return meta | {"card": card}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", help="training run folder (holds NAME.safetensors + NAME.json)")
    parser.add_argument("--evaluation", type=Path, help="results.json written by `sdenhance evaluate`")
    parser.add_argument("--suite", type=Path, help="suite.json written by `sdenhance evaluate --suite`")
    parser.add_argument("--refresh-noise-range", metavar="NAME", help="re-measure a shipped card's noise range only")
    args = parser.parse_args()
    if args.refresh_noise_range:
        card_path = SHIPPED_DIR / f"{args.refresh_noise_range}.json"
        meta = json.loads(card_path.read_text(encoding="utf-8"))
        meta["card"]["noise_range"] = noise_range(CONFIG_DIR / f"{args.refresh_noise_range}.yaml")
        card_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        print(f"{card_path}: noise_range {meta['card']['noise_range']}")
        return
    if args.run is None:
        parser.error("give a run folder, or --refresh-noise-range NAME")
    weights = next(args.run.glob("*.safetensors"))
    meta = read_card(weights).meta
    evaluation = json.loads(args.evaluation.read_text(encoding="utf-8")) if args.evaluation else None
    suite = json.loads(args.suite.read_text(encoding="utf-8")) if args.suite else None
    SHIPPED_DIR.mkdir(exist_ok=True)
    shipped = SHIPPED_DIR / weights.name
    card = complete_card(meta, evaluation, suite)  # first: a failure here leaves the shipped pair as it was
    shutil.copyfile(weights, shipped)
    shipped.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(f"shipped {shipped} ({shipped.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
