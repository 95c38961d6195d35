"""``sdenhance evaluate``: the diffusion model against classical baselines on degraded reference scans.

Each reference volume is degraded (seeded, with the simulators training uses), every method is run on the
degraded volume and timed, and every output is scored against the reference with ``metrics.quality`` on
the same grid, never padded. Written: ``results.json``, ``results.md`` (per case and mean) and one PNG per
case (reference / degraded / methods, with absolute-error maps, axial and coronal).

``--suite SUITE.yaml`` runs a robustness suite: scans and degradation families chosen to lie outside what a
model was trained on (other patients, scanners and kernels; noise textures and levels held out of training), so
its scores stand in for the scans a clinician will bring. Each family is an ordinary evaluation in its own
folder; ``suite.md`` then puts every (family, scan) on one row: the input, the best classical filter, BM4D and
the model, with the model's margins and whether it meets the floor (better than its input, and than the best
classical filter in both PSNR and SSIM).

Denoising degrades the whole scan and crops afterwards: simulated CT noise depends on every ray through
the full cross-section and the PET count scale on the whole body. Super-resolution crops first (thickening
slices is local) and gives every method the thick-slice volume itself.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import EngineError, InputError, VolumeError, require
from .io import Volume, centre_crop, read_volume, resample_onto
from .registry import MODALITIES, ModelCard, default_for, resolve

if TYPE_CHECKING:
    import torch

    from .normalize import Normalizer
    from .pipeline import EnhanceOptions

#: Named degradations: (modality, spec in ``degrade.make_degradation``'s format).
PRESETS: dict[str, tuple[str, dict]] = {
    "ct10": ("ct", {"kind": "ct_low_dose", "dose": 0.10}),
    "ct25": ("ct", {"kind": "ct_low_dose", "dose": 0.25}),
    "ct50": ("ct", {"kind": "ct_low_dose", "dose": 0.50}),
    "pet10": ("pet", {"kind": "pet_low_count", "fraction": 0.10}),
    "pet25": ("pet", {"kind": "pet_low_count", "fraction": 0.25}),
    "mri-snr10": ("mri", {"kind": "mri_rician", "snr": 10}),
    "ct-sr2": ("ct", {"kind": "thick_slices", "factor": 2, "axis": "z"}),
    "ct-sr4": ("ct", {"kind": "thick_slices", "factor": 4, "axis": "z"}),
    "mri-sr2": ("mri", {"kind": "thick_slices", "factor": 2, "axis": "z"}),
}
#: The modality a noise model implies (slice thickening fits any modality).
KIND_MODALITY = {"ct_low_dose": "ct", "ct_image_noise": "ct", "pet_low_count": "pet", "mri_rician": "mri"}
#: 3D SSIM's Gaussian window (sigma 1.5, scikit-image's truncation at 3.5 sigma) spans 11 voxels per axis.
MIN_SIDE = 11
OURS = "ours"
DEGRADED = "degraded"
PANEL_INCHES = 2.1  # width of one image in the figure
METRIC_TITLES = {
    "psnr_window": "PSNR window (dB)",
    "ssim_window": "SSIM window",
    "psnr_full": "PSNR full (dB)",
    "ssim_full": "SSIM full",
    "psnr_p995": "PSNR (dB)",
    "ssim_p995": "SSIM",
}


# -----------------------------------------------------------------------------------------------------------
# What to evaluate
# -----------------------------------------------------------------------------------------------------------


def parse_degradation(text: str) -> tuple[dict, str | None]:
    """(spec, implied modality or None) from a preset name or a JSON/YAML mapping; raises ValueError."""
    if text in PRESETS:
        modality, spec = PRESETS[text]
        return dict(spec), modality
    import yaml

    from .degrade import make_degradation

    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"degradation '{text}' is not valid JSON/YAML: {exc}") from exc
    if not isinstance(spec, dict):
        raise ValueError(f"degradation '{text}' is neither a preset ({', '.join(PRESETS)}) nor a JSON/YAML mapping")
    make_degradation(spec)  # validates, with a message listing the valid keys
    return spec, KIND_MODALITY.get(spec["kind"])


def task_of(spec: dict) -> str:
    return "sr" if spec["kind"] == "thick_slices" else "denoise"


@dataclass(frozen=True)
class Setup:
    """One evaluation's settings, shared by every case."""

    spec: dict
    modality: str
    methods: tuple[str, ...]  # baseline names and/or "ours"
    card: ModelCard | None = None  # needed when "ours" is among the methods
    steps: int | None = None
    seed: int = 0
    device: str = "auto"
    crop: tuple[int, int, int] | None = None
    samples: int = 1
    overlap: float = 0.25
    backend: str = "auto"

    @property
    def task(self) -> str:
        return task_of(self.spec)

    @property
    def sr_params(self) -> dict:
        """What SR baselines need beyond the volume; empty for denoising."""
        return {"factor": self.spec["factor"], "axis": self.spec["axis"]} if self.task == "sr" else {}

    def enhance_options(self) -> EnhanceOptions:
        from .pipeline import EnhanceOptions

        return EnhanceOptions(
            task=self.task,
            modality=self.modality,
            steps=self.steps,
            seed=self.seed,
            samples=self.samples,
            device=self.device,
            overlap=self.overlap,
            backend=self.backend,
            **self.sr_params,
        )


# -----------------------------------------------------------------------------------------------------------
# Cases and methods
# -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    reference: Volume  # ground truth on the scoring grid
    model_input: Volume  # what every method gets: the noisy volume, or the thick-slice volume for SR
    degraded: Volume  # that input as shown and scored on the reference grid (nearest neighbour for SR)
    # denoising: the intensity scaling of the whole degraded scan, as a whole-scan run would fit it (not the crop's)
    normalizer: Normalizer | None = None


def prepare_case(name: str, volume: Volume, setup: Setup, rng: np.random.Generator) -> Case:
    from .degrade import as_reference, scored_denoising_case
    from .normalize import Normalizer

    if setup.task == "sr":
        volume = as_reference(volume, setup.modality)
        return _sr_case(name, volume if setup.crop is None else centre_crop(volume, setup.crop), setup.spec, rng)
    noisy, reference, whole = scored_denoising_case(volume, setup.spec, setup.modality, rng, setup.crop)
    return _checked(Case(name, reference, noisy, noisy, Normalizer.fit(whole.array, setup.modality)))


def _checked(case: Case) -> Case:
    if min(case.reference.array.shape) < MIN_SIDE:
        raise VolumeError(
            f"{case.name}: {case.reference.array.shape} voxels; scoring needs at least {MIN_SIDE} along each axis "
            "(the 3D SSIM window): use a larger --crop"
        )
    return case


def _sr_case(name: str, volume: Volume, spec: dict, rng: np.random.Generator) -> Case:
    import SimpleITK as sitk

    from .degrade import slab_phase, thick_slice_pair

    thick, reference = thick_slice_pair(volume, spec, slab_phase(spec, rng))
    return _checked(Case(name, reference, thick, resample_onto(thick, reference, sitk.sitkNearestNeighbor)))


@dataclass
class MethodResult:
    label: str
    output: np.ndarray | None  # None when the method was skipped
    scores: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    settings: dict = field(default_factory=dict)  # the chosen setting
    note: str = ""
    sweep: list[dict] = field(default_factory=list)  # every setting tried, with its scores and time

    def record(self) -> dict:
        """JSON-ready, without the output array."""
        fields = {"label": self.label, "scores": self.scores, "seconds": self.seconds, "settings": self.settings}
        return fields | ({"note": self.note} if self.note else {}) | ({"sweep": self.sweep} if self.sweep else {})


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, round(time.perf_counter() - start, 3)


def run_baseline(name: str, case: Case, setup: Setup) -> MethodResult:
    """Every setting of the baseline's sweep; keeps the best on the headline metric (oracle tuning)."""
    from .baselines import BASELINES
    from .metrics import headline, quality

    baseline = BASELINES[name]
    reason = baseline.skip_reason(case.model_input.array.size)
    if reason:
        return MethodResult(baseline.label, None, note=reason)
    key = headline(setup.modality)
    oracle = {"noise": case.model_input.array - case.reference.array} if baseline.oracle_noise else {}
    best, sweep = None, []
    for settings in baseline.sweep:
        output, seconds = _timed(
            baseline.run, case.model_input.array, case.model_input.spacing, **setup.sr_params, **oracle, **settings
        )
        scores = quality(case.reference.array, output, setup.modality)
        sweep.append({"settings": settings, "seconds": seconds} | scores)
        if best is None or scores[key] > best.scores[key]:
            best = MethodResult(baseline.label, output, scores, seconds, settings)
    if len(sweep) > 1:
        best.note, best.sweep = f"oracle-tuned: best of {len(sweep)} settings on {key}", sweep
    return best


def run_ours(case: Case, setup: Setup, model: torch.nn.Module | None = None) -> MethodResult:
    """The model of ``setup.card`` (its weights in memory as ``model`` when given, e.g. while training)."""
    from .metrics import quality
    from .pipeline import enhance_volume

    options = replace(setup.enhance_options(), normalizer=case.normalizer)
    result, seconds = _timed(enhance_volume, case.model_input, setup.card, options, model=model)
    scores = quality(case.reference.array, result.volume.array, setup.modality)
    # the precision and backend auto picked on this machine: bf16 and fp32 differ in the third decimal of the PSNR
    sampler = result.sampler
    settings = {"steps": sampler.steps, "seed": setup.seed, "precision": sampler.precision, "backend": sampler.backend}
    settings |= {"samples": options.samples} if options.samples > 1 else {}
    return MethodResult(f"ours ({setup.card.name})", result.volume.array, scores, seconds, settings)


def evaluate_case(case: Case, setup: Setup) -> dict[str, MethodResult]:
    """The degraded input and every method of ``setup``, in order, scored against the reference."""
    from .metrics import quality

    label = "thick slices" if setup.task == "sr" else DEGRADED
    results = {
        DEGRADED: MethodResult(
            label, case.degraded.array, quality(case.reference.array, case.degraded.array, setup.modality)
        )
    }
    for name in setup.methods:
        results[name] = run_ours(case, setup) if name == OURS else run_baseline(name, case, setup)
    return results


# -----------------------------------------------------------------------------------------------------------
# Figure
# -----------------------------------------------------------------------------------------------------------


def display_window(reference: np.ndarray, modality: str) -> tuple[float, float]:
    """CT: the soft-tissue window the metrics use; PET/MRI: [0, reference p99.5], as the metrics scale."""
    from .metrics import CT_WINDOW

    if modality == "ct":
        return CT_WINDOW
    return 0.0, float(np.percentile(reference, 99.5)) or 1.0


@dataclass(frozen=True)
class Plane:
    name: str
    cut: Callable[[np.ndarray], np.ndarray]  # (z, y, x) volume -> 2D image, first row at the top
    pixel_aspect: float  # pixel height / width, from the spacing
    panel_aspect: float  # image height / width in mm


def _planes(volume: Volume) -> list[Plane]:
    """The central axial and coronal planes; the coronal one with superior at the top."""
    sx, sy, sz = volume.spacing
    nz, ny, nx = volume.array.shape
    superior_up = volume.direction[8] > 0  # +z points superior in LPS

    def coronal(array: np.ndarray) -> np.ndarray:
        plane = array[:, ny // 2, :]
        return plane[::-1] if superior_up else plane

    return [
        Plane("axial", lambda array: array[nz // 2], sy / sx, ny * sy / (nx * sx)),
        Plane("coronal", coronal, sz / sx, nz * sz / (nx * sx)),
    ]


def _heading(result: MethodResult, modality: str) -> str:
    from .metrics import headline

    psnr_key = headline(modality)
    ssim_key = psnr_key.replace("psnr", "ssim")
    return f"{result.label}\n{result.scores[psnr_key]:.2f} dB, SSIM {result.scores[ssim_key]:.3f}"


def save_figure(case: Case, results: dict[str, MethodResult], modality: str, path: Path, title: str) -> Path:
    """Columns: reference, then each result; rows: axial image, its |error|, coronal image, its |error|."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    shown = [(_heading(r, modality), r.output) for r in results.values() if r.output is not None]
    columns = [("reference", case.reference.array), *shown]
    low, high = display_window(case.reference.array, modality)
    error_max = (high - low) / 8  # 50 HU for CT: both residual noise and lost detail stand out
    unit = " HU" if modality == "ct" else ""
    planes = _planes(case.reference)
    heights = [plane.panel_aspect for plane in planes for _ in ("image", "error")]
    figure = Figure(figsize=(PANEL_INCHES * len(columns), PANEL_INCHES * sum(heights) + 1.0), layout="constrained")
    grid = figure.add_gridspec(len(heights), len(columns), height_ratios=heights)
    image_style = {"cmap": "gray", "vmin": low, "vmax": high, "interpolation": "nearest"}
    error_style = {"cmap": "inferno", "vmin": 0.0, "vmax": error_max, "interpolation": "nearest"}
    for row, plane in enumerate(planes):
        # errors of the windowed images, as the headline metric sees them
        reference = np.clip(plane.cut(case.reference.array), low, high)
        for col, (heading, volume) in enumerate(columns):
            image_ax, error_ax = _panel(figure, grid[2 * row, col]), _panel(figure, grid[2 * row + 1, col])
            image = np.clip(plane.cut(volume), low, high)
            image_ax.imshow(image, aspect=plane.pixel_aspect, **image_style)
            if row == 0:
                image_ax.set_title(heading, fontsize=9)
            if col > 0:
                error_ax.imshow(np.abs(image - reference), aspect=plane.pixel_aspect, **error_style)
                continue
            image_ax.set_ylabel(plane.name)
            error_ax.set_axis_off()  # the reference has no error: its first cell holds the error scale
            if row == 0:
                scale = ScalarMappable(Normalize(0.0, error_max), error_style["cmap"])
                bar = error_ax.inset_axes((0.1, 0.45, 0.8, 0.12))
                figure.colorbar(scale, cax=bar, orientation="horizontal", label=f"|error| in window{unit}")
    figure.suptitle(f"{title}\ndisplay window [{low:g}, {high:g}]{unit}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _panel(figure, cell):
    ax = figure.add_subplot(cell)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


# -----------------------------------------------------------------------------------------------------------
# Report
# -----------------------------------------------------------------------------------------------------------


def case_record(case: Case, source: str, results: dict[str, MethodResult], figure: Path, setup: Setup) -> dict:
    noise = {"noise": noise_record(case, setup.modality)} if setup.task == "denoise" else {}
    return {
        "name": case.name,
        "source": source,
        "shape_zyx": list(case.reference.array.shape),
        "spacing_xyz": list(case.reference.spacing),
        "figure": figure.name,
        "methods": {name: result.record() for name, result in results.items()},
    } | noise


#: A reference whose own noise exceeds this share of the input's (ratio of noise standard deviations) is a noisy
#: target: its own noise is then at least the added noise (1/sqrt(2)), so a method that removes all noise, the scan's
#: own with the added, can score no better than the input it was given.
NOISY_REFERENCE = 0.7


def noise_record(case: Case, modality: str) -> dict:
    """The estimated noise (``noise.estimate_noise``) of the reference and of the input, and whether the reference
    is too noisy for "better than the input" to be measurable."""
    from .noise import estimate_noise, noise_std_ratio

    reference, degraded = estimate_noise(case.reference.array, modality), estimate_noise(case.degraded.array, modality)
    ratio = noise_std_ratio(reference, degraded)
    return {
        "reference": str(reference),
        "input": str(degraded),
        "reference_to_input": None if np.isnan(ratio) else round(ratio, 3),
        "noisy_reference": bool(ratio > NOISY_REFERENCE),
    }


def _means(cases: list[dict]) -> dict[str, dict]:
    """Per method: mean scores and seconds over the cases where it ran, and how many those were."""
    means = {}
    for name in cases[0]["methods"]:
        ran = [c["methods"][name] for c in cases if c["methods"][name]["scores"]]
        if not ran:
            continue
        keys = ran[0]["scores"]
        means[name] = {
            "label": ran[0]["label"],
            "scores": {k: float(np.mean([r["scores"][k] for r in ran])) for k in keys},
            "seconds": None if ran[0]["seconds"] is None else float(np.mean([r["seconds"] for r in ran])),
            "cases": len(ran),
        }
    return means


def build_report(setup: Setup, cases: list[dict]) -> dict:
    from . import __version__
    from .metrics import headline

    return {
        "engine_version": __version__,
        "task": setup.task,
        "modality": setup.modality,
        "degradation": setup.spec,
        "checkpoint": None if setup.card is None else {"name": setup.card.name, "path": str(setup.card.path)},
        "seed": setup.seed,
        "crop_zyx": list(setup.crop) if setup.crop else None,
        "headline_metric": headline(setup.modality),
        "metric_ranges": _metric_note(setup.modality),
        "cases": cases,
        "mean": _means(cases),
    }


def _metric_note(modality: str) -> str:
    from .metrics import CT_FULL, CT_WINDOW

    if modality == "ct":
        ranges = (
            f"window = both volumes clipped to {list(CT_WINDOW)} HU (data range {CT_WINDOW[1] - CT_WINDOW[0]:g}); "
            f"full = clipped to {list(CT_FULL)} HU (data range {CT_FULL[1] - CT_FULL[0]:g})"
        )
    else:
        ranges = "both volumes divided by the reference's 99.5th percentile and clipped to [0, 1] (data range 1)"
    return f"{ranges}; SSIM is 3D with a Gaussian window, sigma 1.5 voxels"


def _row(label: str, entry: dict, keys: list[str]) -> str:
    scores = [f"{entry['scores'][k]:.4f}" if k.startswith("ssim") else f"{entry['scores'][k]:.2f}" for k in keys]
    seconds = "" if entry.get("seconds") is None else f"{entry['seconds']:.1f}"
    settings = ", ".join(f"{k}={v}" for k, v in entry.get("settings", {}).items())
    return "| " + " | ".join([label, *scores, seconds, settings]) + " |"


def markdown_table(report: dict) -> str:
    first = report["cases"][0]["methods"][DEGRADED]["scores"]
    keys = list(first)
    header = ["method", *(METRIC_TITLES.get(k, k) for k in keys), "seconds", "setting"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for case in report["cases"]:
        lines.append(f"| **{case['name']}** {case['shape_zyx']} |" + " |" * (len(header) - 1))
        for entry in case["methods"].values():
            if entry["scores"]:
                lines.append(_row(entry["label"], entry, keys))
            else:
                lines.append(f"| {entry['label']} |" + " |" * (len(keys) + 1) + f" {entry['note']} |")
    if len(report["cases"]) > 1:  # the mean of one case would repeat its rows
        lines.append(f"| **mean of {len(report['cases'])} cases** |" + " |" * (len(header) - 1))
        for entry in report["mean"].values():
            partial = "" if entry["cases"] == len(report["cases"]) else f" ({entry['cases']} cases)"
            lines.append(_row(entry["label"] + partial, entry | {"settings": {}}, keys))
    tuned = {e["label"]: e["note"] for c in report["cases"] for e in c["methods"].values() if e.get("sweep")}
    if tuned:
        notes.append(
            f"{', '.join(tuned)}: oracle-tuned baselines, the best of a small parameter sweep per case on "
            f"{report['headline_metric']} (chosen with the reference: an upper bound for hand tuning); "
            "seconds are those of the chosen setting."
        )
    checkpoint = report["checkpoint"]["name"] if report["checkpoint"] else "none"
    intro = [
        f"Degradation `{json.dumps(report['degradation'])}`, {report['modality'].upper()}, checkpoint {checkpoint}, "
        f"seed {report['seed']}, crop {report['crop_zyx'] or 'none'} (z, y, x).",
        f"Metrics: {report['metric_ranges']}.",
    ]
    return "\n".join(intro + [""] + lines + [""] + notes) + "\n"


def write_report(setup: Setup, records: list[dict], folder: Path) -> tuple[dict, list[Path]]:
    """The report over ``records`` (from ``run_case``), written as results.json and results.md."""
    report = build_report(setup, records)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "results.json", folder / "results.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md_path.write_text("# sdenhance evaluate\n\n" + markdown_table(report), encoding="utf-8")
    return report, [json_path, md_path]


def run_case(
    name: str, source: str, volume: Volume, setup: Setup, rng: np.random.Generator, folder: Path
) -> tuple[Case, dict[str, MethodResult], dict]:
    """Degrade ``volume``, run and score every method, draw ``folder/NAME.png``; returns the case record too."""
    case = prepare_case(name, volume, setup, rng)
    results = evaluate_case(case, setup)
    title = f"{name}: {json.dumps(setup.spec)}"
    figure = save_figure(case, results, setup.modality, folder / f"{name}.png", title)
    return case, results, case_record(case, source, results, figure, setup)


def evaluate_files(sources: list[Path], setup: Setup, folder: Path) -> dict:
    """Every source volume through ``run_case`` (one in memory at a time), then the report."""
    records = []
    for index, source in enumerate(sources):
        name = Path(source).name.split(".")[0]
        rng = np.random.default_rng([setup.seed, index])
        records.append(run_case(name, str(source), read_volume(source), setup, rng, folder)[2])
    return write_report(setup, records, folder)[0]


# -----------------------------------------------------------------------------------------------------------
# Robustness suites: every degradation family on every held-out scan
# -----------------------------------------------------------------------------------------------------------

#: Baselines that get the true noise (oracles no user has): reported beside, not among, the classical filters.
ORACLE_BASELINES = ("bm4d",)


@dataclass(frozen=True)
class Suite:
    name: str
    modality: str
    files: list[Path]
    families: dict[str, dict]  # label -> degradation spec
    crop: tuple[int, int, int] | None = None

    @classmethod
    def load(cls, path: str | Path) -> Suite:
        """Read YAML; scans are relative to ``data_root``, itself relative to the suite file's folder."""
        import yaml

        from .degrade import make_degradation

        path = Path(path)
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        root = (path.parent / raw.get("data_root", ".")).resolve()
        files = [root / name for name in raw["files"]]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"suite scans not found: {missing} (set data_root in {path})")
        for spec in raw["families"].values():
            make_degradation(spec)  # a typo fails now, not after the first family's hour
        crop = tuple(raw["crop"]) if raw.get("crop") else None
        return cls(raw.get("name", path.stem), raw["modality"], files, dict(raw["families"]), crop)


def run_suite(suite: Suite, setup: Setup, folder: Path) -> list[dict]:
    """Every family through ``evaluate_files`` into ``folder/LABEL``; writes suite.json and suite.md."""
    reports = []
    for label, spec in suite.families.items():
        report = evaluate_files(suite.files, replace(setup, spec=spec, crop=suite.crop), folder / label)
        reports.append(report | {"family": label})
    rows = suite_rows(reports)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.json").write_text(json.dumps({"suite": suite.name, "rows": rows}, indent=2) + "\n", "utf-8")
    (folder / "suite.md").write_text(suite_table(suite.name, rows, reports[0]["headline_metric"]), "utf-8")
    return rows


def suite_rows(reports: list[dict]) -> list[dict]:
    """One row per (family, case): headline PSNR and SSIM of the input, the best classical filter, the oracle
    baselines and the model, where each ran."""
    rows = []
    for report in reports:
        key = report["headline_metric"]
        for case in report["cases"]:
            ran = {name: _headline(m, key) for name, m in case["methods"].items() if m["scores"]}
            classical = [n for n in ran if n not in (DEGRADED, OURS, *ORACLE_BASELINES)]
            row = {"family": report["family"], "case": case["name"], "degraded": ran[DEGRADED]}
            row |= {"noise": case["noise"]} if "noise" in case else {}
            if classical:
                row["best_classical"] = ran[max(classical, key=lambda n: ran[n]["psnr"])]
            row |= {name: ran[name] for name in (*ORACLE_BASELINES, OURS) if name in ran}
            rows.append(row)
    return rows


def _headline(method: dict, psnr_key: str) -> dict:
    scores = method["scores"]
    return {"label": method["label"], "psnr": scores[psnr_key], "ssim": scores[psnr_key.replace("psnr", "ssim")]}


def meets_floor(row: dict) -> bool | None:
    """Better than its input, and than the best classical filter in PSNR and SSIM; None without those."""
    if OURS not in row or "best_classical" not in row:
        return None
    ours, best = row[OURS], row["best_classical"]
    return ours["psnr"] > row["degraded"]["psnr"] and ours["psnr"] > best["psnr"] and ours["ssim"] > best["ssim"]


def suite_table(name: str, rows: list[dict], metric: str) -> str:
    def cell(row, key):
        entry = row.get(key)
        return "" if entry is None else f"{entry['psnr']:.2f} / {entry['ssim']:.3f}"

    def margin(row, key):
        if OURS not in row or key not in row:
            return ""
        return f"{row[OURS]['psnr'] - row[key]['psnr']:+.2f}"

    def noise(row):
        entry = row.get("noise")
        return "" if entry is None else f"{entry['reference']} / {entry['input']}"

    header = (
        "| family | case | noise: reference / input | input | best classical | BM4D (true spectrum) | ours "
        "| vs classical | vs BM4D | floor |"
    )
    lines = [f"# Robustness suite {name}", "", f"PSNR ({metric}, dB) / SSIM per cell.", "", header, "|" + "---|" * 10]
    for row in rows:
        best = row.get("best_classical")
        floor = {True: "met", False: "**missed**", None: ""}[meets_floor(row)]
        if row.get("noise", {}).get("noisy_reference"):
            floor += " (noisy reference)"
        lines.append(
            f"| {row['family']} | {row['case']} | {noise(row)} | {cell(row, DEGRADED)} | "
            f"{'' if best is None else best['label'] + ' ' + cell(row, 'best_classical')} | {cell(row, 'bm4d')} | "
            f"{cell(row, OURS)} | {margin(row, 'best_classical')} | {margin(row, 'bm4d')} | {floor} |"
        )
    met = [meets_floor(r) for r in rows if meets_floor(r) is not None]
    if met:
        lines += ["", f"Floor met on {sum(met)} of {len(met)} rows."]
    noisy = sum(bool(r.get("noise", {}).get("noisy_reference")) for r in rows)
    if noisy:
        lines += [
            "",
            f"{noisy} rows have a noisy reference (its own estimated noise above {NOISY_REFERENCE:g} of the input's): "
            "there, removing the scan's own noise too counts against a method, so those scores favour methods "
            "that remove only the added noise (BM4D is told its spectrum).",
        ]
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------------------------------------
# Command line
# -----------------------------------------------------------------------------------------------------------


def _crop(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError("crop is Z,Y,X voxels, e.g. 32,256,256")
    return tuple(parts)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score the model against classical baselines on degraded reference scans")
    p.add_argument("references", nargs="*", help="reference volumes (NIfTI / NRRD / MHA / DICOM folder)")
    p.add_argument("--config", help="training YAML: also evaluate its val_files, with its val_degradation by default")
    p.add_argument(
        "--suite", help="robustness suite YAML (scans x degradation families, e.g. scripts/configs/robustness-ct.yaml)"
    )
    p.add_argument(
        "--degradation",
        help=f"preset ({', '.join(PRESETS)}) or a JSON/YAML spec, e.g. '{{kind: ct_low_dose, dose: 0.25}}'",
    )
    p.add_argument("--checkpoint", help="model name or .safetensors path (default: the shipped model for the task)")
    p.add_argument("--modality", choices=MODALITIES, help="default: implied by the degradation, else the checkpoint's")
    p.add_argument(
        "--methods", type=_names, help="comma list: gaussian,curvature,nlm,bm4d (denoise), bspline,lanczos (SR), ours"
    )
    p.add_argument("--crop", type=_crop, help="centre crop Z,Y,X applied after degradation (faster runs)")
    p.add_argument("--steps", type=int, help="sparse steps K for our model (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="seeds the degradation and the sampler")
    p.add_argument("--samples", type=int, default=1, help="samples our model averages (as `enhance --samples`)")
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap of our model (as `enhance --overlap`)")
    p.add_argument("--backend", choices=["auto", "torch", "openvino"], default="auto", help="as `enhance --backend`")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch and SimpleITK (timings depend on it)")
    p.add_argument("-o", "--output", default="evaluation", help="output folder (default: ./evaluation)")
    p.set_defaults(func=run_evaluate)


def _sources_and_degradation(args, suite=None) -> tuple[list[Path], dict, str | None]:
    """Reference files (given and the config's val_files), the degradation spec and the modality it implies; for
    a suite, its scans and its first family (every family has the suite's task and modality)."""
    if suite is not None:
        return suite.files, next(iter(suite.families.values())), suite.modality
    sources, config = [Path(r) for r in args.references], None
    if args.config:
        from .config import TrainConfig

        config = TrainConfig.load(args.config)
        sources += config.paths(config.val_files)
    if not sources:
        raise ValueError("give reference volumes, or --config CONFIG.yaml to use its val_files")
    if args.degradation:
        return sources, *parse_degradation(args.degradation)
    if config:
        return sources, config.val_degradation or config.degradation, config.modality
    raise ValueError(f"give --degradation: a preset ({', '.join(PRESETS)}) or a JSON/YAML spec")


def setup_from_args(args, suite=None) -> tuple[list[Path], Setup]:
    """References and settings from the command line; raises ValueError / CheckpointError with advice."""
    from .baselines import BASELINES, baselines_for

    sources, spec, implied = _sources_and_degradation(args, suite)
    task = task_of(spec)
    methods = args.methods or (*baselines_for(task), OURS)
    unknown = [m for m in methods if m != OURS and (m not in BASELINES or BASELINES[m].task != task)]
    if unknown:
        raise ValueError(
            f"unknown methods for {task}: {', '.join(unknown)}; use {', '.join(baselines_for(task))}, ours"
        )
    if implied and args.modality and implied != args.modality:
        raise ValueError(f"the degradation is for {implied.upper()}, not {args.modality.upper()}")
    asked = implied or args.modality
    card = None
    if OURS in methods:
        card = resolve(args.checkpoint) if args.checkpoint else default_for(task, asked, spec.get("factor"))
    modality = asked or (card.modality if card else None)
    if modality is None:
        raise ValueError("give --modality (a slice-thickening degradation fits any modality)")
    setup = Setup(
        spec,
        modality,
        tuple(methods),
        card,
        args.steps,
        args.seed,
        args.device,
        args.crop,
        args.samples,
        args.overlap,
        args.backend,
    )
    if card:
        from .pipeline import check_compatible

        check_compatible(card, setup.enhance_options())  # fail now, not after degrading every case
    return sources, setup


def set_threads(threads: int | None) -> None:
    if threads:
        import SimpleITK as sitk
        import torch

        torch.set_num_threads(threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def run_evaluate(args) -> int:
    require("eval")  # figures (matplotlib) and the NLM noise estimate (PyWavelets)
    set_threads(args.threads)
    folder = Path(args.output)
    try:
        if args.suite:
            return _run_suite(args, folder)
        sources, setup = setup_from_args(args)
        report = evaluate_files(sources, setup, folder)
    except EngineError:
        raise
    except ValueError as exc:  # the degradation, methods or config given: advice for the user, not a bug
        raise InputError(str(exc)) from exc
    print(markdown_table(report))
    print(f"wrote {folder / 'results.json'}, {folder / 'results.md'} and {len(report['cases'])} figure(s) in {folder}")
    return 0


def _run_suite(args, folder: Path) -> int:
    suite = Suite.load(args.suite)
    _, setup = setup_from_args(args, suite)
    run_suite(suite, setup, folder)
    print((folder / "suite.md").read_text(encoding="utf-8"))
    print(f"wrote {folder / 'suite.md'}, {folder / 'suite.json'} and one folder per family in {folder}")
    return 0
