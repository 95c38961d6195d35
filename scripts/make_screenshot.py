"""Draw the extension's screenshot (Resources/Screenshot01.png): the panel beside a Red/Yellow comparison.

The panel is drawn from the module's .ui by ../shared/tools/render_ui.py (Slicer widgets as look-alike
stand-ins; needs `pip install pyside6-essentials`); the two views are an axial slice of a held-out abdomen CT
(CRLM-CT-1006, TCIA Colorectal-Liver-Metastases, CC BY 4.0) at a simulated 25 % dose and the shipped
ct-denoise model's result, both at the same soft-tissue window, as the comparison layout shows them.

    python scripts/make_screenshot.py [--out Resources/Screenshot01.png] [--threads N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sdenhance.evaluate import Setup, prepare_case, set_threads  # noqa: E402
from sdenhance.io import read_volume  # noqa: E402
from sdenhance.pipeline import EnhanceOptions, enhance_volume  # noqa: E402
from sdenhance.registry import resolve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SCAN = SHARED / "data" / "ct" / "ct_crlm1006_abdomen.nii.gz"
PANEL_UI = ROOT / "SparseDiffusionEnhance" / "Resources" / "UI" / "SparseDiffusionEnhance.ui"
CROP = (16, 300, 440)  # (z, y, x): the abdomen without the empty field of view around it
WINDOW = (-160, 240)  # HU: the soft-tissue window the evaluation scores in


def render_panel(folder: Path) -> np.ndarray:
    out = folder / "panel.png"
    tool = SHARED / "tools" / "render_ui.py"
    subprocess.run([sys.executable, str(tool), str(PANEL_UI), str(out), "--width", "420"], check=True)
    return plt.imread(out)


def noisy_and_enhanced() -> tuple[np.ndarray, np.ndarray]:
    setup = Setup({"kind": "ct_low_dose", "dose": 0.25}, "ct", ("ours",), resolve("ct-denoise"), crop=CROP)
    case = prepare_case(SCAN.name, read_volume(SCAN), setup, np.random.default_rng(0))
    result = enhance_volume(case.model_input, setup.card, EnhanceOptions(task="denoise")).volume
    middle = case.model_input.array.shape[0] // 2
    return case.model_input.array[middle], result.array[middle]


def compose(panel: np.ndarray, noisy: np.ndarray, enhanced: np.ndarray, out: Path) -> None:
    figure = plt.figure(figsize=(15, 6.8), facecolor="#2b2b2b")
    grid = figure.add_gridspec(1, 3, width_ratios=[0.62, 1, 1], wspace=0.02, left=0.005, right=0.995)
    side = figure.add_subplot(grid[0])
    side.imshow(panel)
    side.set_axis_off()
    for cell, image, label, colour in (
        (grid[1], noisy, "Red: input (simulated 25 % dose)", "#c0504d"),
        (grid[2], enhanced, "Yellow: enhanced (ct-denoise, K = 5)", "#e8c547"),
    ):
        view = figure.add_subplot(cell)
        # rows run anterior to posterior (LPS): drawn top-down, anterior is up, as in Slicer's axial view
        view.imshow(image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
        view.set_title(label, color=colour, fontsize=13, loc="left")
        view.set_xticks([])
        view.set_yticks([])
        for spine in view.spines.values():
            spine.set_color(colour)
            spine.set_linewidth(2)
    figure.savefig(out, dpi=90, facecolor=figure.get_facecolor())
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Screenshot01.png")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if not SCAN.exists():
        sys.exit(f"{SCAN} is missing: the screenshot uses the shared data folder beside the repository")
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        panel = render_panel(Path(folder))
    compose(panel, *noisy_and_enhanced(), args.out)


if __name__ == "__main__":
    main()
