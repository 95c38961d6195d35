"""``sdenhance demo``: the whole job on a fresh machine, with no data of its own.

A procedural torso phantom is brought to 25 % dose (projection-domain noise), denoised by the shipped CT
model and by the better of two fast classical baselines (Gaussian, curvature diffusion; oracle-tuned), and
scored. Written: NIfTI volumes, the comparison figure and results.json / results.md, by the same code as
``sdenhance evaluate``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CheckpointError, require

DEGRADATION = "ct25"
#: NLM is left out: on its own it would take longer than everything else together.
BASELINES = ("gaussian", "curvature")
#: (z, y, x) voxels and (x, y, z) mm: a 35 cm field of view, so the body is adult-sized and 25 % dose is as
#: noisy as in a patient (a smaller body attenuates less and gets far less noise).
SHAPE, SPACING = (24, 384, 384), (0.9, 0.9, 2.5)
FAST_SHAPE, FAST_SPACING = (16, 256, 256), (1.35, 1.35, 2.5)
NO_MODEL_HELP = (
    "No CT denoising model is shipped with this installation yet. Train one (hours on a CPU) with\n"
    "  sdenhance train --config scripts/configs/ct-denoise.yaml\n"
    "then run  sdenhance demo --checkpoint runs/ct-denoise/ct-denoise.safetensors"
)


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="phantom -> 25 %% dose CT -> denoised by our model and a baseline, scored")
    p.add_argument("--out", default="sdenhance-demo", help="output folder (default: ./sdenhance-demo)")
    p.add_argument("--checkpoint", help="model name or .safetensors path (default: the shipped CT denoiser)")
    p.add_argument("--fast", action="store_true", help=f"coarser phantom: {FAST_SHAPE} voxels instead of {SHAPE}")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch and SimpleITK")
    p.set_defaults(func=run_demo)


def demo(folder: Path, checkpoint: str | None = None, shape=SHAPE, spacing=SPACING, device: str = "auto") -> dict:
    """Run the demo into ``folder``; returns the report (raises CheckpointError without a usable model)."""
    from .evaluate import OURS, Setup, parse_degradation, run_case, write_report
    from .phantom import torso_phantom
    from .pipeline import check_compatible
    from .registry import default_for, resolve

    card = resolve(checkpoint) if checkpoint else default_for("denoise", "ct")
    spec, modality = parse_degradation(DEGRADATION)
    setup = Setup(spec, modality, (*BASELINES, OURS), card, device=device)
    check_compatible(card, setup.enhance_options())
    source = f"sdenhance.phantom.torso_phantom({shape}, {spacing})"
    case, results, record = run_case(
        "phantom", source, torso_phantom(shape, spacing), setup, np.random.default_rng(0), folder
    )
    report, paths = write_report(setup, [record], folder)
    report["files"] = [str(p) for p in (*paths, folder / record["figure"], *_write_volumes(case, results, folder))]
    return report


def _write_volumes(case, results: dict, folder: Path) -> list[Path]:
    """Reference, degraded, ours and the best baseline as NIfTI, all on the reference's geometry."""
    from .evaluate import OURS
    from .io import write_volume
    from .metrics import headline

    key = headline("ct")
    best = max(BASELINES, key=lambda name: results[name].scores[key])
    arrays = {
        "reference": case.reference.array,
        "degraded_25pct_dose": case.degraded.array,
        "ours": results[OURS].output,
        f"baseline_{best}": results[best].output,
    }
    return [
        write_volume(case.reference.with_array(array.astype(np.float32)), folder / f"{name}.nii.gz", overwrite=True)
        for name, array in arrays.items()
    ]


def run_demo(args) -> int:
    from .evaluate import markdown_table, set_threads

    require("eval")  # the figure and the baselines' noise estimate
    set_threads(args.threads)
    shape, spacing = (FAST_SHAPE, FAST_SPACING) if args.fast else (SHAPE, SPACING)
    try:
        report = demo(Path(args.out), args.checkpoint, shape, spacing, args.device)
    except CheckpointError as exc:
        if args.checkpoint:
            raise
        raise CheckpointError(f"{exc}\n{NO_MODEL_HELP}") from exc
    print(markdown_table(report))
    print("wrote:\n  " + "\n  ".join(report["files"]))
    return 0
