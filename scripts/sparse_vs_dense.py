"""The seed paper's training comparison: one network, data and CPU budget, trained with the sparse schedule (K
timesteps) and with the dense one (every timestep), side by side, each validated with its own real sampler.

    python scripts/sparse_vs_dense.py --config scripts/configs/ct-denoise.yaml --steps 3000 --val-every 500 \\
        --output runs/sparse-vs-dense-ct
    python scripts/sparse_vs_dense.py --output runs/sparse-vs-dense-ct --report-only   # curves of what has run

Both runs start from scratch (the shipped weights were trained sparse, so a warm start would favour that schedule),
with the config's data, model, learning rate and seed, the decay squeezed into the last quarter of --steps, and one
CPU thread each, at the same time, so that machine load slows both alike. The sparse run validates with its K steps,
the dense run with --dense-sampling-steps DDIM steps (its card's sampling_steps), as `sdenhance evaluate` would
sample each exported checkpoint. Training time is the sum of the logged step times (validation excluded).

Written to --output: sparse/ and dense/ (ordinary run folders, resumable: run the same command again), curves.png
(headline PSNR and SSIM against steps and training minutes) and comparison.json with the steps and training seconds each
schedule needs to reach the PSNR that both reach, and their ratio.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
from sdenhance.metrics import headline

SCHEDULES = ("sparse", "dense")


def run_config(base: dict, schedule: str, args: argparse.Namespace, data_root: Path) -> dict:
    """The base config for one schedule of the comparison (see the module docstring)."""
    config = dict(base, name=f"{base['name']}-{schedule}", data_root=str(data_root), init_from=None)
    config |= {"max_steps": args.steps, "val_every": args.val_every, "log_every": 1, "ckpt_every": args.val_every}
    config["lr_decay"] = {"start": int(args.steps * 0.75), "end": args.steps, "final": 2.0e-5}
    config["val_families"] = {}  # the headline degradation only: each validation costs the dense run its 50 passes
    config["sampling_steps"] = args.dense_sampling_steps if schedule == "dense" else None
    return config


def launch(folder: Path, schedule: str) -> subprocess.Popen:
    run = folder / schedule
    command = [sys.executable, "-m", "sdenhance", "train", "--config", str(folder / f"{schedule}.yaml")]
    command += ["--output", str(run), "--schedule", schedule, "--threads", "1", "--no-progress", "--resume"]
    log = (folder / f"{schedule}.log").open("a", encoding="utf-8")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


def train_both(args: argparse.Namespace) -> None:
    """Both runs at once; the dense one starts once the sparse one has built the shared degradation cache."""
    config_path = args.config.resolve()
    base = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    data_root = (config_path.parent / base.get("data_root", ".")).resolve()
    args.output.mkdir(parents=True, exist_ok=True)
    for schedule in SCHEDULES:
        text = yaml.safe_dump(run_config(base, schedule, args, data_root), sort_keys=False)
        (args.output / f"{schedule}.yaml").write_text(text, encoding="utf-8")
    (args.output / "cache").mkdir(exist_ok=True)
    for schedule in SCHEDULES:  # one cache for both: the CT simulator costs minutes per scan
        (args.output / schedule).mkdir(exist_ok=True)
        link = args.output / schedule / "cache"
        if not link.exists():
            link.symlink_to(Path("..") / "cache", target_is_directory=True)
    sparse = launch(args.output, "sparse")
    while sparse.poll() is None and not (args.output / "sparse" / "log.csv").is_file():
        time.sleep(10)
    dense = launch(args.output, "dense")
    codes = [sparse.wait(), dense.wait()]
    if any(codes):
        raise SystemExit(f"a training run failed (exit codes {codes}); see {args.output}/*.log")


def curves(run: Path, psnr_key: str) -> dict:
    """Validation step -> mean headline PSNR/SSIM over the cases, and the training seconds spent by then."""
    seconds, elapsed = {}, 0.0
    with (run / "log.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            elapsed += float(row["step_s"])
            seconds[int(row["step"])] = elapsed
    scores = defaultdict(lambda: defaultdict(list))
    with (run / "val.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            metric = row["metric"]
            if metric in (psnr_key, psnr_key.replace("psnr", "ssim")):
                scores[int(row["step"])][metric[:4]].append(float(row["value"]))
    steps = sorted(s for s in scores if s in seconds)
    return {
        "steps": steps,
        "seconds": [round(seconds[s], 2) for s in steps],
        "psnr": [round(float(np.mean(scores[s]["psnr"])), 4) for s in steps],
        "ssim": [round(float(np.mean(scores[s]["ssim"])), 4) for s in steps],
    }


def reaching(curve: dict, target: float) -> tuple[float, float] | None:
    """(steps, training seconds) at which the validation PSNR first reaches ``target``, linearly interpolated."""
    points = list(zip(curve["steps"], curve["seconds"], curve["psnr"], strict=True))
    for i, (step, seconds, psnr) in enumerate(points):
        if psnr >= target:
            if i == 0:
                return float(step), float(seconds)
            s0, t0, p0 = points[i - 1]
            share = (target - p0) / (psnr - p0)
            return s0 + share * (step - s0), t0 + share * (seconds - t0)
    return None


def compare(folder: Path) -> dict:
    modality = yaml.safe_load((folder / "sparse.yaml").read_text(encoding="utf-8"))["modality"]
    key = headline(modality)
    runs = {s: curves(folder / s, key) for s in SCHEDULES if (folder / s / "val.csv").is_file()}
    out = {"metric": key, "runs": runs}
    if len(runs) == 2 and all(r["psnr"] for r in runs.values()):
        target = min(max(r["psnr"]) for r in runs.values())  # the best PSNR both schedules reach
        reached = {s: reaching(r, target) for s, r in runs.items()}
        out["target_psnr"] = target
        out["reached"] = {
            s: None if r is None else {"steps": round(r[0]), "seconds": round(r[1], 1)} for s, r in reached.items()
        }
        if all(reached.values()):
            out["dense_over_sparse_steps"] = round(reached["dense"][0] / reached["sparse"][0], 2)
            out["dense_over_sparse_time"] = round(reached["dense"][1] / reached["sparse"][1], 2)
        out["final"] = {s: {k: r[k][-1] for k in ("steps", "seconds", "psnr", "ssim")} for s, r in runs.items()}
    (folder / "comparison.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    plot(folder, runs, out.get("target_psnr"))
    return out


def plot(folder: Path, runs: dict, target: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for schedule, curve in runs.items():
        axes[0].plot(curve["steps"], curve["psnr"], marker="o", label=schedule)
        axes[1].plot(np.array(curve["seconds"]) / 60, curve["psnr"], marker="o", label=schedule)
        axes[2].plot(curve["steps"], curve["ssim"], marker="o", label=schedule)
    for ax, (xlabel, ylabel) in zip(
        axes,
        [("training steps", "PSNR (dB)"), ("training minutes (1 CPU thread)", "PSNR (dB)"), ("training steps", "SSIM")],
        strict=True,
    ):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if target is not None:
        for ax in axes[:2]:
            ax.axhline(target, color="grey", lw=0.8, ls="--")
    axes[0].legend()
    figure.suptitle(f"{folder.name}: sparse (K timesteps) vs dense training, validation mean over held-out cases")
    figure.tight_layout()
    figure.savefig(folder / "curves.png", dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="training config both runs share (scripts/configs/*.yaml)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--dense-sampling-steps", type=int, default=50, help="DDIM steps the dense run samples with")
    parser.add_argument("--report-only", action="store_true", help="curves and ratio of what has run so far")
    args = parser.parse_args(argv)
    if not args.report_only:
        if args.config is None:
            parser.error("--config is needed to train (or pass --report-only)")
        train_both(args)
    print(json.dumps({k: v for k, v in compare(args.output).items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
