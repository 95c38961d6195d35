"""GPU check of the sdenhance engine (issue 19), a few minutes on one CUDA GPU: CPU/CUDA parity on a crop, network
throughput per precision, and an end-to-end 512x512x256 `sdenhance enhance` with its peak GPU memory, printed as one
markdown table for the README's Performance section. It runs the shipped ct-denoise model through the engine's own
pipeline and command line.

    python scripts/gpu_check.py                  # GPU 0
    python scripts/gpu_check.py --gpu 1 --out gpu-check.json

Without a CUDA GPU it says so and exits with code 2, measuring nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sdenhance import __version__
from sdenhance.cli import main as sdenhance_main
from sdenhance.degrade import make_degradation
from sdenhance.io import write_volume
from sdenhance.metrics import quality
from sdenhance.phantom import torso_phantom
from sdenhance.pipeline import Enhancement, EnhanceOptions
from sdenhance.registry import resolve

EXIT_NO_CUDA = 2
CHECKPOINT = "ct-denoise"
PARITY_CROP = (32, 192, 192)  # (z, y, x); small enough for the CPU half
THROUGHPUT_VOLUME = (64, 512, 512)
ENDTOEND_VOLUME = (256, 512, 512)
PRECISIONS = ("fp32", "bf16", "fp16")
GB = 1024**3


def no_cuda_message() -> str:
    """Why this machine cannot run the check, or "" when it can."""
    if torch.cuda.is_available():
        return ""
    build = torch.version.cuda or "none (a CPU-only build)"
    return (
        f"gpu_check: no CUDA GPU is visible to PyTorch (torch {torch.__version__}, CUDA build {build}); "
        "run it on a machine with an NVIDIA GPU and a CUDA build of torch. Nothing was measured."
    )


def parity(cpu_hu: np.ndarray, cuda_hu: np.ndarray, reference_hu: np.ndarray) -> dict[str, float]:
    """How far the CUDA result is from the CPU one: largest voxel difference (HU) and PSNR change (dB, CUDA minus
    CPU, both against the reference in the [-160, 240] HU window)."""
    cpu, cuda = (quality(reference_hu, x.astype(np.float32), "ct")["psnr_window"] for x in (cpu_hu, cuda_hu))
    difference = np.abs(cuda_hu.astype(np.float32) - cpu_hu.astype(np.float32))
    return {"max_abs_diff_hu": float(difference.max()), "psnr_cpu_db": cpu, "psnr_diff_db": cuda - cpu}


def markdown_table(rows: list[tuple[str, str]]) -> str:
    lines = ["| check | result |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def _timed(fn, device: torch.device):
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize(device)
    return result, time.perf_counter() - start


def _low_dose_crop():
    """(25 %-dose phantom crop, its full-dose reference) in HU."""
    phantom = torso_phantom(PARITY_CROP)
    degraded, reference = make_degradation({"kind": "ct_low_dose", "dose": 0.25})(
        phantom.with_array(phantom.array.astype(np.float32)), np.random.default_rng(0)
    )
    return degraded.with_array(np.rint(degraded.array).astype(np.int16)), reference.array


def check_parity(card) -> dict[str, float]:
    degraded, reference = _low_dose_crop()
    results = {}
    for where in ("cpu", "cuda"):
        options = EnhanceOptions(device=where, precision="fp32")
        results[where] = Enhancement(degraded, card, options).run().volume.array
    return parity(results["cpu"], results["cuda"], reference)


def check_throughput(card, device: torch.device, precision: str) -> dict[str, float]:
    """Volume voxels per second per network pass, every window evaluated (after a warm-up run)."""
    options = EnhanceOptions(device="cuda", precision=precision, skip_background=False)
    Enhancement(torso_phantom((16, 128, 128)), card, options).run()  # warm-up: cuDNN and autocast set-up
    enhancement = Enhancement(torso_phantom(THROUGHPUT_VOLUME), card, options)
    estimate = enhancement.estimate_seconds()
    _, seconds = _timed(enhancement.run, device)
    voxels = np.prod(THROUGHPUT_VOLUME) * enhancement.plan.evaluations
    return {"voxels_per_s": float(voxels / seconds), "seconds": seconds, "estimate_s": estimate}


def check_endtoend(device: torch.device, folder: Path) -> dict[str, float]:
    """`sdenhance enhance` (defaults, --device cuda) of a noisy 512x512x256 int16 CT phantom, file to file."""
    phantom = torso_phantom(ENDTOEND_VOLUME)
    noisy = phantom.array + np.random.default_rng(0).normal(0, 20, phantom.array.shape)
    source = write_volume(phantom.with_array(np.rint(noisy).astype(np.int16)), folder / "ct.nrrd")
    torch.cuda.reset_peak_memory_stats(device)
    args = ["enhance", str(source), "-o", str(folder / "out.nrrd"), "--device", "cuda", "--progress", "none"]
    code, seconds = _timed(lambda: sdenhance_main([*args, "--checkpoint", CHECKPOINT]), device)
    if code != 0:
        raise RuntimeError(f"sdenhance enhance exited {code}")
    return {"seconds": seconds, "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / GB}


def run(gpu: int) -> tuple[list[tuple[str, str]], dict]:
    torch.cuda.set_device(gpu)  # --device cuda then means this GPU
    device = torch.device("cuda", gpu)
    card = resolve(CHECKPOINT)
    figures = {"gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "sdenhance": __version__}
    rows = [("GPU", f"{figures['gpu']}, torch {torch.__version__}, CUDA {torch.version.cuda}")]
    figures["parity"] = check_parity(card)
    p = figures["parity"]
    rows.append(
        (
            f"CPU/CUDA parity, {'x'.join(map(str, PARITY_CROP))} 25 %-dose phantom crop, fp32",
            f"max difference {p['max_abs_diff_hu']:.2f} HU, PSNR {p['psnr_cpu_db']:.2f} dB on CPU, "
            f"CUDA {p['psnr_diff_db']:+.3f} dB",
        )
    )
    figures["throughput"] = {precision: check_throughput(card, device, precision) for precision in PRECISIONS}
    for precision, t in figures["throughput"].items():
        rows.append(
            (
                f"throughput per pass, {'x'.join(map(str, THROUGHPUT_VOLUME))}, {precision}",
                f"{t['voxels_per_s'] / 1e6:.1f} Mvoxel/s ({t['seconds']:.1f} s; estimated {t['estimate_s']:.1f} s)",
            )
        )
    with tempfile.TemporaryDirectory(prefix="sdenhance-gpu-check-") as folder:
        figures["endtoend"] = check_endtoend(device, Path(folder))
    e = figures["endtoend"]
    rows.append(
        (
            f"end-to-end {'x'.join(map(str, reversed(ENDTOEND_VOLUME)))} `sdenhance enhance` (defaults)",
            f"{e['seconds']:.1f} s, peak GPU memory {e['peak_gpu_gb']:.2f} GB",
        )
    )
    return rows, figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", type=int, default=0, help="CUDA device index (default 0)")
    p.add_argument("--out", type=Path, help="also write the figures here as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if message := no_cuda_message():
        print(message, file=sys.stderr)
        return EXIT_NO_CUDA
    started = time.perf_counter()
    rows, figures = run(args.gpu)
    rows.append(("whole check", f"{time.perf_counter() - started:.0f} s"))
    print(markdown_table(rows))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
