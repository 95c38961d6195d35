"""Speed, memory and cost benchmarks of the sdenhance engine (issue 6): they print figures and write JSON.
They are measurements, not tests; run them on an otherwise idle machine for figures worth quoting.

    python scripts/benchmark.py --checkpoint ct-denoise --threads 2 --out bench-cpu.json
    python scripts/benchmark.py --quick --threads 1 --out bench-quick.json       # small volumes, minutes
    python scripts/benchmark.py --device cuda --checkpoint ct-denoise --out bench-gpu.json
    python scripts/benchmark.py --only overhead throughput --precisions fp32 bf16 --repeats 2

Benchmarks (names for --only), sizes as (z, y, x):
  overhead      total sampling time / (evaluations x one batched forward over the same windows), on a 128^3
                phantom with every window evaluated. Target <= 1.10.
  throughput    voxels per second per step for each of --precisions (the overhead runs), and how far each
                precision's output is from float32's.
  sparse_dense  K sparse steps against the 1000-step chain (999 evaluations) on the same crop of the held-out
                scan: time ratio and PSNR/SSIM of each, the PSNR range over --sparse-seeds starting noises, and
                the K-step result after one more pass at t = 1. Target >= 90x faster, PSNR not lower.
  steps         PSNR/SSIM and time for K in --sweep-steps, DDIM and Heun, and for --sweep-overlaps at the
                default K, on a crop of the held-out scan.
  memory        peak RSS of `sdenhance enhance` child processes on a 256^3 and a 256x512x512 phantom, and the
                growth per voxel between them. Target < 6 GB.
  endtoend      wall time of `sdenhance enhance` (defaults) on a 128x256x256 low-dose CT phantom. Target
                <= 5 min on CPU, <= 5 s on one H100.
  reference     FLOPs per voxel and per volume, ours against a stand-in of the reference design (a ~43 M
                parameter 3D UNet on non-overlapping 128^3 tiles, 11 evaluations per tile): an estimate.
  costmodel     the cost of a whole scan (--levers-scan) per voxel: FLOPs per network pass per window, passes
                (K, Heun), overlap factor (voxels in windows / voxels in the volume) and share of windows
                skipped as air at overlaps 0.25, 0.1 and 0, with the seconds per window measured here.
  levers        each speed lever on the whole --levers-scan side by side, each in its own `sdenhance enhance`
                process (--lever-runs, K, overlap and backend): seconds, peak RSS, the estimate printed before the run,
                PSNR/SSIM against the first run; then --preview of the middle slab with the first two runs'
                settings, its slice against theirs. Targets: preview <= 3 s, estimate within 30 %.

Without --checkpoint the network is the default architecture with random weights: speed, memory and FLOPs are
representative, quality figures are not (they are computed and flagged "trained": false). Quality inputs are
the held-out CT scan in ../shared/data (degraded to 25 % dose) or, with --quick or --scan phantom, the
procedural torso phantom.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from sdenhance import __version__
from sdenhance.checkpoint import build_meta, load_model, save_checkpoint, schedule_of
from sdenhance.degrade import make_degradation
from sdenhance.evaluate import Case, Setup, prepare_case
from sdenhance.io import Volume, read_volume, write_volume
from sdenhance.metrics import quality
from sdenhance.model import ModelConfig, SparseDiffusionUNet, count_parameters
from sdenhance.normalize import Normalizer
from sdenhance.phantom import torso_phantom
from sdenhance.pipeline import Enhancement, EnhanceOptions, default_steps, pick_precision, sampler_config
from sdenhance.registry import ModelCard, read_card, resolve
from sdenhance.sampler import (
    PatchDenoiser,
    SamplerConfig,
    count_windows,
    evaluations,
    foreground_windows,
    network_context,
    prepare_model,
    sample,
    sampling_input,
    seconds_per_window,
    uses_channels_last,
    window_slices,
)
from sdenhance.schedule import ScheduleConfig, q_sample
from torch import nn

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO.parent / "shared" / "data"
HELD_OUT_SCAN = "ct/ct_crlm1006_abdomen.nii.gz"  # a validation patient of scripts/configs/ct-denoise.yaml
LEVERS_SCAN = "ct/ct_lidc0001_chest_gelightspeedplus_2p5mm.nii.gz"  # a whole chest CT, 512x404x80, in no config
DEGRADATION = {"kind": "ct_low_dose", "dose": 0.25}
GB = 1024**3

# the reference design, as the paper and its configuration describe it
REFERENCE_TILE = 128
REFERENCE_EVALUATIONS = 11


@dataclass(frozen=True)
class Sizes:
    overhead: tuple[int, int, int]
    dense_crop: tuple[int, int, int] | None  # None: one training patch
    dense_steps: int
    sweep_crop: tuple[int, int, int]
    sweep_steps: tuple[int, ...]
    memory: tuple[tuple[int, int, int], ...]
    endtoend: tuple[int, int, int]
    reference_volumes: tuple[tuple[int, int, int], ...] = field(default=((128, 256, 256), (256, 512, 512)))


FULL = Sizes(
    overhead=(128, 128, 128),
    dense_crop=(16, 128, 128),
    dense_steps=999,
    sweep_crop=(24, 192, 192),
    sweep_steps=(1, 2, 3, 5, 10, 20),
    memory=((256, 256, 256), (256, 512, 512)),
    endtoend=(128, 256, 256),
)
QUICK = Sizes(
    overhead=(32, 64, 64),
    dense_crop=None,
    dense_steps=20,
    sweep_crop=(16, 96, 96),
    sweep_steps=(1, 2, 5),
    memory=((32, 64, 64), (32, 128, 128)),
    endtoend=(32, 96, 96),
)


@dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    card: ModelCard
    model: SparseDiffusionUNet
    trained: bool
    work: Path
    cases: dict = field(default_factory=dict)

    @property
    def modality(self) -> str:
        return self.card.modality

    def options(self, **changes) -> EnhanceOptions:
        """`sdenhance enhance`'s options with the benchmark's steps, batch, precision and layout, and ``changes``;
        PyTorch runs the network here (the timers hook its modules); the levers compare backends in their runs."""
        channels_last = {"auto": None, "on": True, "off": False}[self.args.channels_last]
        options = EnhanceOptions(
            steps=self.args.steps,
            sw_batch_size=self.args.batch,
            precision=self.args.precision,
            channels_last=channels_last,
            device=self.device.type,
            backend="torch",
        )
        return replace(options, **changes)

    def config(self, **changes) -> SamplerConfig:
        """The sampler settings `sdenhance enhance` would use with ``options(**changes)``."""
        return sampler_config(self.card, self.options(**changes), self.device)


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    wall: float  # seconds, the fastest of the repeats
    cpu: float  # this process's CPU seconds, the least of the repeats: with one thread, robust to other load


def timed(fn, device: torch.device, repeats: int = 1):
    """(result of the last call, Timing)."""
    wall, cpu, result = math.inf, math.inf, None
    for _ in range(repeats):
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        _sync(device)
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
    return result, Timing(wall, cpu)


def normalised(volume: Volume, modality: str) -> tuple[np.ndarray, Normalizer]:
    normalizer = Normalizer.fit(volume.array, modality)
    return normalizer.forward(volume.array), normalizer


def degraded_case(ctx: Context, crop: tuple[int, int, int]) -> tuple[Case, str]:
    """(case, source) of shape ``crop``: the held-out scan's centre or the phantom, prepared as `sdenhance
    evaluate` prepares its cases (CT degrades whole slices, the normaliser is fitted on the whole degraded scan)."""
    if crop in ctx.cases:
        return ctx.cases[crop]
    setup = Setup(spec=json.loads(ctx.args.degradation), modality=ctx.modality, methods=(), crop=crop)
    if ctx.args.scan == "phantom":
        volume, source = torso_phantom(crop), "phantom"
    else:
        path = Path(ctx.args.scan)
        volume = read_volume(path if path.is_absolute() else ctx.args.data_root / path)
        source = f"{path.name} centre"
    case = prepare_case(source, volume, setup, np.random.default_rng(0))
    ctx.cases[crop] = (case, f"{source} {list(case.reference.array.shape)}")
    return ctx.cases[crop]


def enhance_case(ctx: Context, case: Case, **changes) -> tuple[np.ndarray, float]:
    """(``case`` enhanced as `sdenhance enhance` would with ``ctx.options(**changes)``, sampling seconds)."""
    options = replace(ctx.options(**changes), normalizer=case.normalizer)
    enhancement = Enhancement(case.model_input, ctx.card, options, ctx.model)
    result, timing = timed(enhancement.run, ctx.device)
    return result.volume.array, timing.wall


def scores(reference: Volume, estimate: np.ndarray, modality: str) -> dict[str, float]:
    return {k: round(v, 4) for k, v in quality(reference.array, estimate, modality).items()}


def network_pass(
    ctx: Context, y: np.ndarray, spacing_zyx: tuple[float, ...], config: SamplerConfig, t: int, passes: int
) -> Timing:
    """One batched network pass over the windows ``sample`` evaluates (no stitching, content codes ready),
    with the sampler's own model preparation and autocast: the denominator of the overhead ratio. Averaged
    over ``passes`` back-to-back passes, as many as the sampler makes, so that both measurements are exposed
    to the machine's other load for as long (the fastest of short runs would be biased low)."""
    model = prepare_model(ctx.model, config, ctx.device)
    volume = torch.from_numpy(y)[None, None]
    noise = torch.randn(volume.shape, generator=torch.Generator().manual_seed(0))
    slices = window_slices(tuple(y.shape), config.patch_size, config.overlap)
    every = (slice(None), slice(None))
    batches = []
    for i in range(0, len(slices), config.sw_batch_size):
        chunk = slices[i : i + config.sw_batch_size]
        x = torch.cat([noise[(*every, *s)] for s in chunk]).to(ctx.device)
        c = torch.cat([volume[(*every, *s)] for s in chunk]).to(ctx.device)
        batches.append((x, c))
    spacing = torch.tensor([spacing_zyx], dtype=torch.float32, device=ctx.device)
    with torch.inference_mode(), network_context(config, ctx.device):
        contents = [model.encode_content(c) for _, c in batches]
        steps = [torch.full((x.shape[0],), t, dtype=torch.long, device=ctx.device) for x, _ in batches]

        def one_pass():
            for (x, c), content, step in zip(batches, contents, steps, strict=True):
                model(x, c, step, spacing.expand(x.shape[0], 3), content)

        x, c = batches[0]
        model(x, c, steps[0], spacing.expand(x.shape[0], 3), contents[0])  # warm-up (oneDNN / cuDNN set-up)
        _, timing = timed(lambda: [one_pass() for _ in range(passes)], ctx.device)
    return Timing(timing.wall / passes, timing.cpu / passes)


class NetworkClock:
    """Time spent inside the network's forward during a run, from hooks on the model (plain closures, so
    they also work on the copy the sampler may make); on CUDA each call is synchronised."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.device, self.wall, self.cpu, self.started = device, 0.0, 0.0, (0.0, 0.0)
        self.handles = [
            model.register_forward_pre_hook(lambda module, args: self._start()),
            model.register_forward_hook(lambda module, args, output: self._stop()),
        ]

    def _start(self) -> None:
        _sync(self.device)
        self.started = (time.perf_counter(), time.process_time())

    def _stop(self) -> None:
        _sync(self.device)
        self.wall += time.perf_counter() - self.started[0]
        self.cpu += time.process_time() - self.started[1]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


#: Runs a command and writes its peak RSS. The benchmark spawns children through it because a child's
#: ru_maxrss starts from the RSS of the process it was forked from, here a small interpreter, not this one.
LAUNCHER = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(code)"
)


def run_cli(ctx: Context, source: Path, output: Path, *extra: str) -> dict:
    """Run `sdenhance enhance` in a child process: wall seconds, the engine's own seconds, peak RSS."""
    cmd = [sys.executable, "-m", "sdenhance", "enhance", str(source), "-o", str(output), "--overwrite"]
    cmd += ["--checkpoint", str(ctx.card.path), "--device", ctx.device.type, "--progress", "jsonl"]
    cmd += ["--precision", ctx.args.precision, *extra]
    if ctx.args.batch:
        cmd += ["--batch", str(ctx.args.batch)]
    if ctx.args.steps and "--steps" not in extra:
        cmd += ["--steps", str(ctx.args.steps)]
    env = dict(os.environ)
    if ctx.args.threads:
        env |= {"OMP_NUM_THREADS": str(ctx.args.threads), "MKL_NUM_THREADS": str(ctx.args.threads)}
    log, rss_file = ctx.work / "child.log", ctx.work / "child.maxrss"
    start = time.perf_counter()
    with open(log, "w") as stdout:
        code = subprocess.call(
            [sys.executable, "-c", LAUNCHER, str(rss_file), *cmd], stdout=stdout, stderr=stdout, env=env
        )
    wall = time.perf_counter() - start
    lines = log.read_text().splitlines()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {code}:\n" + "\n".join(lines[-20:]))
    events = [json.loads(line) for line in lines if line.startswith("{")]
    start, done = (next(e for e in events if e["event"] == kind) for kind in ("start", "done"))
    rss = int(rss_file.read_text()) * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux
    out = {
        "wall_s": round(wall, 2),
        "engine_s": done["seconds"],
        "backend": start["backend"],
        "precision": start["precision"],
        "estimate_s": start["estimate_s"],
        "calibration_s": start["calibration_s"],
        "peak_rss_gb": round(rss / GB, 3),
    }
    return out | ({"preview": done["preview"]} if done.get("preview") else {})


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------------------
# a stand-in of the reference design's network, for its FLOP count only
# ---------------------------------------------------------------------------------------------------------


class _StandInBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(32, cin), nn.Conv3d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(32, cout), nn.Conv3d(cout, cout, 3, padding=1)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(nn.functional.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None, None]
        return self.skip(x) + self.conv2(nn.functional.silu(self.norm2(h)))


class _StandInAttention(nn.Module):
    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.heads, self.norm = heads, nn.GroupNorm(32, channels)
        self.qkv, self.out = nn.Conv3d(channels, 3 * channels, 1), nn.Conv3d(channels, channels, 1)

    def forward(self, x, emb=None):
        b, c, *spatial = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b * self.heads, 3, c // self.heads, -1).unbind(1)
        weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c // self.heads), dim=-1)
        return x + self.out((v @ weights.transpose(1, 2)).reshape(b, c, *spatial))


class ReferenceStandIn(nn.Module):
    """A DDPM-style 3D UNet of the reference design's published configuration: base width 64, widths
    x(1, 1, 2, 2, 4), two residual blocks per level (three on the way up), self-attention at 1/8 resolution
    and in the middle, input (x_t, y). 47 M parameters against the reported ~43 M; the FLOPs are dominated by
    the full-resolution 64-channel levels, which that difference barely touches. Written from the description
    to count FLOPs: an estimate of their cost, not their code."""

    def __init__(self, base: int = 64, mults=(1, 1, 2, 2, 4), blocks: int = 2, attention_levels=(3,)):
        super().__init__()
        emb = 4 * base
        self.base = base
        self.time = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.stem = nn.Conv3d(2, base, 3, padding=1)
        self.down, skips, ch = nn.ModuleList(), [base], base
        for level, mult in enumerate(mults):
            for _ in range(blocks):
                layers = [_StandInBlock(ch, base * mult, emb)]
                ch = base * mult
                layers += [_StandInAttention(ch)] if level in attention_levels else []
                self.down.append(nn.ModuleList(layers))
                skips.append(ch)
            if level < len(mults) - 1:
                self.down.append(nn.ModuleList([nn.Conv3d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)
        self.middle = nn.ModuleList([_StandInBlock(ch, ch, emb), _StandInAttention(ch), _StandInBlock(ch, ch, emb)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(mults))):
            for i in range(blocks + 1):
                layers = [_StandInBlock(ch + skips.pop(), base * mult, emb)]
                ch = base * mult
                layers += [_StandInAttention(ch)] if level in attention_levels else []
                layers += [nn.ConvTranspose3d(ch, ch, 2, stride=2)] if level and i == blocks else []
                self.up.append(nn.ModuleList(layers))
        self.head = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv3d(ch, 1, 3, padding=1))

    def forward(self, x, t):
        half = self.base // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
        emb = self.time(torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=1))
        h, hs = self.stem(x), []
        hs.append(h)
        for layers in self.down:
            for layer in layers:
                h = layer(h, emb) if isinstance(layer, _StandInBlock | _StandInAttention) else layer(h)
            hs.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for layers in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            for layer in layers:
                h = layer(h, emb) if isinstance(layer, _StandInBlock | _StandInAttention) else layer(h)
        return self.head(h)


# ---------------------------------------------------------------------------------------------------------
# the benchmarks
# ---------------------------------------------------------------------------------------------------------


def bench_speed(ctx: Context) -> dict:
    """Overhead ratio and throughput, per precision, on the phantom with every window evaluated."""
    if "speed" in ctx.cases:
        return ctx.cases["speed"]
    volume = torso_phantom(ctx.sizes.overhead)
    y, normalizer = normalised(volume, ctx.modality)
    spacing_zyx = tuple(reversed(volume.spacing))
    runs, reference = {}, None
    for precision in ctx.args.precisions:
        config = ctx.config(precision=precision, skip_background=False)
        t = max(schedule_of(ctx.card).sparse_timesteps(config.steps))
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        evals = evaluations(config)
        passes, samplings, inside = [], [], []
        for _ in range(ctx.args.repeats):  # interleaved, so both see the same background load
            passes.append(network_pass(ctx, y, spacing_zyx, config, t, evals))
            clock = NetworkClock(ctx.model, ctx.device)
            x0, timing = timed(
                lambda c=config: sample(ctx.model, schedule_of(ctx.card), y, spacing_zyx, c, ctx.device), ctx.device
            )
            clock.remove()
            samplings.append(timing)
            inside.append(timing.wall / clock.wall)
        forward_s, sample_s = min(p.wall for p in passes), min(s.wall for s in samplings)
        forward_cpu, sample_cpu = min(p.cpu for p in passes), min(s.cpu for s in samplings)
        hu = normalizer.inverse(x0)
        reference = hu if reference is None else reference
        run = {
            "shape_zyx": list(y.shape),
            "windows_per_pass": count_windows(y.shape, config.patch_size, config.overlap),
            "sw_batch_size": config.sw_batch_size,
            "channels_last": uses_channels_last(config, ctx.device),
            "evaluations": evals,
            "sampling_s": round(sample_s, 3),
            "network_pass_s": round(forward_s, 3),
            "overhead": round(sample_s / (evals * forward_s), 4),
            "sampling_cpu_s": round(sample_cpu, 3),
            "network_pass_cpu_s": round(forward_cpu, 3),
            "overhead_cpu_time": round(sample_cpu / (evals * forward_cpu), 4),
            "overhead_in_run": round(min(inside), 4),
            "voxels_per_s_per_step": round(y.size * evals / sample_s),
            "network_voxels_per_s": round(y.size / forward_s),
            f"max_abs_diff_vs_{ctx.args.precisions[0]}_hu": round(float(np.abs(hu - reference).max()), 4),
            f"rms_diff_vs_{ctx.args.precisions[0]}_hu": round(float(np.sqrt(np.mean((hu - reference) ** 2))), 4),
        }
        if ctx.device.type == "cuda":
            run["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated(ctx.device) / GB, 3)
        runs[precision] = run
        print(
            f"  {precision}: sampling {sample_s:.2f} s, {evals} x network pass {forward_s:.2f} s "
            f"-> overhead {run['overhead']:.3f} (CPU time {run['overhead_cpu_time']:.3f}, "
            f"in-run {run['overhead_in_run']:.3f}); "
            f"{run['voxels_per_s_per_step'] / 1e6:.3f} Mvoxel/s per step",
            flush=True,
        )
    ctx.cases["speed"] = runs
    return runs


def bench_overhead(ctx: Context) -> dict:
    runs = bench_speed(ctx)
    keys = ("shape_zyx", "windows_per_pass", "sw_batch_size", "channels_last", "evaluations", "sampling_s")
    keys += ("network_pass_s", "overhead", "sampling_cpu_s", "network_pass_cpu_s", "overhead_cpu_time")
    keys += ("overhead_in_run",)
    return {
        "target": "<= 1.10",
        "note": "overhead: sampling wall time / (evaluations x one batched network pass, timed separately). "
        "overhead_cpu_time: the same with this process's CPU seconds (with one thread, less sensitive to other "
        "load). overhead_in_run: sampling time / time inside the network's forward during that same run.",
        "by_precision": {p: {k: r[k] for k in keys} for p, r in runs.items()},
    }


def bench_throughput(ctx: Context) -> dict:
    runs = bench_speed(ctx)
    keys = ("voxels_per_s_per_step", "network_voxels_per_s", "evaluations", "sampling_s", "gpu_peak_gb")
    diff = [k for k in next(iter(runs.values())) if "diff_vs" in k]
    return {
        "units": "voxels of the volume per second, per sampling step (evaluation)",
        "by_precision": {p: {k: r[k] for k in (*keys, *diff) if k in r} for p, r in runs.items()},
    }


def bench_sparse_dense(ctx: Context) -> dict:
    crop = ctx.sizes.dense_crop or tuple(ctx.card.meta["patch_size"])
    case, source = degraded_case(ctx, crop)
    reference = case.reference
    chains = {"sparse": {}, "dense": {"steps": ctx.args.dense_steps or ctx.sizes.dense_steps}}
    out = {"input": source, "degraded": scores(reference, case.degraded.array, ctx.modality)}
    estimates = {}
    for name, changes in chains.items():
        config = ctx.config(**changes)
        estimates[name], seconds = enhance_case(ctx, case, **changes)
        out[name] = {"steps": config.steps, "evaluations": evaluations(config), "seconds": round(seconds, 2)}
        out[name] |= scores(reference, estimates[name], ctx.modality)
        print(f"  {name}: K={config.steps}, {seconds:.1f} s, {out[name]}", flush=True)
    key = "psnr_window" if ctx.modality == "ct" else "psnr_p995"
    out["speedup"] = round(out["dense"]["seconds"] / out["sparse"]["seconds"], 1)
    out["psnr_sparse_minus_dense_db"] = round(out["sparse"][key] - out["dense"][key], 3)
    # a difference smaller than what the starting noise alone changes is not a difference
    seed_psnrs = [out["sparse"][key]]
    for seed in range(1, ctx.args.sparse_seeds):
        estimate, _ = enhance_case(ctx, case, seed=seed)
        seed_psnrs.append(scores(reference, estimate, ctx.modality)[key])
    out["sparse_seeds"] = len(seed_psnrs)
    out["sparse_seed_range_db"] = round(max(seed_psnrs) - min(seed_psnrs), 4)
    # where the two chains differ: the dense one ends with passes that see a nearly noise-free input
    refined = pass_at_t1(ctx, case, ctx.config(), estimates["sparse"])
    out["sparse_then_pass_at_t1"] = scores(reference, refined, ctx.modality)
    out["target"] = "speedup >= 90, sparse PSNR not lower than dense"
    return out


def pass_at_t1(ctx: Context, case: Case, config: SamplerConfig, estimate: np.ndarray) -> np.ndarray:
    """One more network pass at t = 1 (a timestep the sparse model never trained on) on a K-step result."""
    normalizer, degraded = case.normalizer, case.model_input
    y_t = torch.from_numpy(normalizer.forward(degraded.array))[None, None]
    x0 = torch.from_numpy(normalizer.forward(estimate).astype(np.float32))[None, None]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(config.seed))
    spacing_zyx = tuple(reversed(degraded.spacing))
    denoiser = PatchDenoiser(prepare_model(ctx.model, config, ctx.device), y_t, spacing_zyx, config, ctx.device)
    with torch.inference_mode():
        x1 = denoiser(q_sample(x0, noise, schedule_of(ctx.card).alphas_cumprod[1].float()), 1)
    return normalizer.inverse(x1[0, 0].numpy())


def bench_steps(ctx: Context) -> dict:
    """Quality and time against K (DDIM and Heun), then against the window overlap at the default K."""
    case, source = degraded_case(ctx, ctx.sizes.sweep_crop)
    degraded, reference = case.model_input, case.reference
    default = ctx.config()
    runs = [(k, heun, default.overlap) for k in ctx.args.sweep_steps or ctx.sizes.sweep_steps for heun in (False, True)]
    runs += [(default.steps, False, overlap) for overlap in ctx.args.sweep_overlaps if overlap != default.overlap]
    rows = []
    for steps, heun, overlap in runs:
        if heun and steps == 1:
            continue  # one step has no transition, so Heun is the same run
        config = ctx.config(steps=steps, heun=heun, overlap=overlap)
        estimate, seconds = enhance_case(ctx, case, steps=steps, heun=heun, overlap=overlap)
        row = {"steps": steps, "heun": heun, "overlap": overlap, "evaluations": evaluations(config)}
        row |= {
            "windows": count_windows(degraded.array.shape, config.patch_size, overlap),
            "seconds": round(seconds, 2),
        }
        rows.append(row | scores(reference, estimate, ctx.modality))
        print(f"  {rows[-1]}", flush=True)
    key = "psnr_window" if ctx.modality == "ct" else "psnr_p995"
    best = max(rows, key=lambda r: r[key])
    return {
        "input": source,
        "degraded": scores(reference, degraded.array, ctx.modality),
        "rows": rows,
        "best": {k: best[k] for k in ("steps", "heun", "overlap", key)},
    }


def bench_memory(ctx: Context) -> dict:
    runs = []
    for shape in ctx.sizes.memory:
        source = write_volume(
            torso_phantom(shape), ctx.work / f"memory-{'x'.join(map(str, shape))}.nrrd", overwrite=True
        )
        run = run_cli(ctx, source, ctx.work / "memory-out.nrrd", "--steps", str(ctx.args.memory_steps))
        runs.append({"shape_zyx": list(shape), "voxels": math.prod(shape)} | run)
        source.unlink()
        print(f"  {runs[-1]}", flush=True)
    small, large = runs[0], runs[-1]
    per_voxel = (large["peak_rss_gb"] - small["peak_rss_gb"]) * GB / max(large["voxels"] - small["voxels"], 1)
    return {
        "steps": ctx.args.memory_steps,
        "runs": runs,
        "growth_bytes_per_voxel": round(per_voxel, 1),
        "growth_float32_volumes": round(per_voxel / 4, 1),
        "fixed_gb": round(small["peak_rss_gb"] - per_voxel * small["voxels"] / GB, 3),
        "target": "< 6 GB at 256x512x512",
    }


def bench_endtoend(ctx: Context) -> dict:
    shape = ctx.sizes.endtoend
    volume = torso_phantom(shape)
    degraded, reference = make_degradation(json.loads(ctx.args.degradation))(
        volume.with_array(volume.array.astype(np.float32)), np.random.default_rng(0)
    )
    scanner = degraded.with_array(np.rint(degraded.array).astype(np.int16))  # what a scanner would store
    source = write_volume(scanner, ctx.work / "endtoend.nrrd", overwrite=True)
    output = ctx.work / "endtoend-out.nrrd"
    run = run_cli(ctx, source, output)
    result = read_volume(output).array.astype(np.float32)
    out = {"shape_zyx": list(shape), "input": f"phantom, {ctx.args.degradation}"} | run
    out |= {"degraded": scores(reference, scanner.array.astype(np.float32), ctx.modality)}
    out |= {"enhanced": scores(reference, result, ctx.modality)}
    out["target"] = "<= 300 s on CPU, <= 5 s on one H100"
    print(f"  {out}", flush=True)
    return out


def our_flops(card: ModelCard) -> tuple[int, int]:
    """FLOPs of one network pass over one window (content code given) and of one content encoding."""
    patch = tuple(card.meta["patch_size"])
    with torch.device("meta"):
        ours = SparseDiffusionUNet(ModelConfig.from_dict(card.meta["model"]))
        y = torch.empty(1, 1, *patch)
        t, spacing = torch.zeros(1, dtype=torch.long), torch.ones(1, 3)
        content = ours.encode_content(y)
        return count_flops(lambda: ours(y, y, t, spacing, content)), count_flops(lambda: ours.encode_content(y))


def bench_reference(ctx: Context) -> dict:
    patch = tuple(ctx.card.meta["patch_size"])
    steps = ctx.args.steps or ctx.card.meta["schedule"]["steps"]
    ours_net, ours_content = our_flops(ctx.card)
    with torch.device("meta"):
        ours = SparseDiffusionUNet(ModelConfig.from_dict(ctx.card.meta["model"]))
        theirs = ReferenceStandIn()
        tile = torch.empty(1, 2, *(REFERENCE_TILE,) * 3)
        theirs_net = count_flops(lambda: theirs(tile, torch.zeros(1)))
    out = {
        "note": "FLOPs of convolutions and matrix products (torch FlopCounterMode, 2 per multiply-add); "
        "theirs is an estimate from a stand-in network of the reported size",
        "ours": {
            "parameters": count_parameters(ours),
            "flops_per_window_voxel": round(ours_net / math.prod(patch)),
            "evaluations": steps,
            "patch": list(patch),
            "overlap": 0.25,
        },
        "reference_stand_in": {
            "parameters": count_parameters(theirs),
            "flops_per_tile_voxel": round(theirs_net / REFERENCE_TILE**3),
            "evaluations": REFERENCE_EVALUATIONS,
            "tile": REFERENCE_TILE,
            "overlap": 0.0,
        },
        "volumes": [],
    }
    for shape in ctx.sizes.reference_volumes:
        windows = count_windows(shape, patch, 0.25)
        ours_total = windows * (steps * ours_net + ours_content)  # content code: once per window
        tiles = math.prod(math.ceil(s / REFERENCE_TILE) for s in shape)
        theirs_total = tiles * REFERENCE_EVALUATIONS * theirs_net
        voxels = math.prod(shape)
        out["volumes"].append(
            {
                "shape_zyx": list(shape),
                "ours_windows": windows,
                "ours_overlap_factor": round(windows * math.prod(patch) / voxels, 3),
                "ours_tflops": round(ours_total / 1e12, 3),
                "ours_flops_per_voxel": round(ours_total / voxels),
                "reference_tiles": tiles,
                "reference_tflops": round(theirs_total / 1e12, 3),
                "reference_flops_per_voxel": round(theirs_total / voxels),
                "ratio_reference_over_ours": round(theirs_total / ours_total, 1),
            }
        )
        print(f"  {out['volumes'][-1]}", flush=True)
    return out


def levers_input(ctx: Context) -> tuple[Volume, Path, str]:
    """(volume, its file, description) of the whole scan the lever benchmarks run on (--quick: the phantom)."""
    if "levers" not in ctx.cases:
        if ctx.args.levers_scan == "phantom":
            volume = torso_phantom(ctx.sizes.endtoend)
            path, source = write_volume(volume, ctx.work / "levers.nrrd", overwrite=True), "phantom"
        else:
            path = Path(ctx.args.levers_scan)
            path = path if path.is_absolute() else ctx.args.data_root / path
            volume, source = read_volume(path), path.name
        ctx.cases["levers"] = (volume, path, f"{source} {list(volume.array.shape)}")
    return ctx.cases["levers"]


def bench_costmodel(ctx: Context) -> dict:
    """FLOPs and predicted seconds of the whole scan per lever, from the windows the network runs on."""
    volume, _, source = levers_input(ctx)
    y, _ = normalised(volume, ctx.modality)
    config = ctx.config()
    patch, voxels = config.patch_size, y.size
    y_t = sampling_input(y, patch)
    forward_flops, content_flops = our_flops(ctx.card)
    t = max(schedule_of(ctx.card).sparse_timesteps(config.steps))
    spacing_zyx = tuple(reversed(volume.spacing))
    forward_s, content_s = seconds_per_window(
        ctx.model, y_t, foreground_windows(y_t, config), spacing_zyx, config, ctx.device, t
    )
    rows = []
    for overlap in (0.25, 0.1, 0.0):
        windows = count_windows(tuple(y_t.shape[2:]), patch, overlap)
        kept = len(foreground_windows(y_t, replace(config, overlap=overlap)))
        for steps, heun in dict.fromkeys([(1, False), (config.steps, False), (config.steps, True)]):
            passes = evaluations(replace(config, steps=steps, heun=heun))
            flops = kept * (passes * forward_flops + content_flops)
            rows.append(
                {
                    "overlap": overlap,
                    "steps": steps,
                    "heun": heun,
                    "evaluations": passes,
                    "windows": windows,
                    "kept_windows": kept,
                    "air_share": round(1 - kept / windows, 4),
                    "overlap_factor": round(windows * math.prod(patch) / voxels, 3),
                    "tflops": round(flops / 1e12, 3),
                    "flops_per_voxel": round(flops / voxels),
                    "predicted_s": round(kept * (passes * forward_s + content_s), 1),
                }
            )
            print(f"  {rows[-1]}", flush=True)
    return {
        "input": source,
        "shape_zyx": list(y.shape),
        "patch": list(patch),
        "flops_per_window_pass": forward_flops,
        "flops_per_window_content": content_flops,
        "network_s_per_window": float(f"{forward_s:.4g}"),  # 4 significant digits: tiny models take microseconds
        "content_s_per_window": round(content_s, 4),
        "network_gflops_per_s": round(forward_flops / forward_s / 1e9, 1),
        "rows": rows,
    }


def seam_ratio(array: np.ndarray, patch: tuple[int, int, int]) -> float:
    """How much larger the step between neighbouring voxels is across the borders of non-overlapping windows than
    elsewhere (mean absolute difference, the largest of the three axes): ~1 where no seam shows, above 1 where
    windows sampled apart meet without blending."""
    array = array.astype(np.float32)
    ratios = []
    for axis, slices in enumerate(zip(*window_slices(array.shape, patch, 0.0), strict=True)):
        borders = sorted({s.start for s in slices} - {0})
        steps = np.abs(np.diff(array, axis=axis)).mean(axis=tuple(a for a in range(3) if a != axis))
        across = np.zeros(len(steps), dtype=bool)
        across[[b - 1 for b in borders]] = True  # np.diff's element b - 1 is the step from b - 1 to b
        if across.any() and (~across).any():
            ratios.append(float(steps[across].mean() / steps[~across].mean()))
    return round(max(ratios), 3) if ratios else 1.0


def bench_levers(ctx: Context) -> dict:
    """The levers side by side on the whole scan, then the preview of its middle slab."""
    volume, path, source = levers_input(ctx)
    patch = tuple(ctx.card.meta["patch_size"])
    runs, outputs = [], []
    for i, (steps, overlap, backend) in enumerate(ctx.args.lever_runs):
        steps = steps or default_steps(ctx.card)
        extra = ["--steps", str(steps), "--overlap", str(overlap), "--backend", backend]
        output = ctx.work / f"lever-{i}.nrrd"
        run = {"steps": steps, "overlap": overlap} | run_cli(ctx, path, output, *extra)
        run["estimate_error"] = round(run["estimate_s"] / run["engine_s"] - 1, 3)
        outputs.append((extra, read_volume(output)))
        output.unlink()
        run["seam_ratio"] = seam_ratio(outputs[-1][1].array, patch)
        if i:
            run["vs_first"] = scores(outputs[0][1], outputs[-1][1].array.astype(np.float32), ctx.modality)
        runs.append(run)
        print(f"  {run}", flush=True)
    middle = volume.array.shape[0] // 2
    previews = []
    for extra, full in outputs[:2]:
        output = ctx.work / "preview.nrrd"
        run = run_cli(ctx, path, output, *extra, "--preview")
        slab = read_volume(output).array[middle - run["preview"]["start"]].astype(np.float32)
        difference = slab - full.array[middle].astype(np.float32)
        run |= {key: runs[len(previews)][key] for key in ("steps", "overlap", "backend")} | {"slice": middle}
        run |= {
            "slice_max_abs_diff_vs_run": round(float(np.abs(difference).max()), 2),
            "slice_rms_diff_vs_run": round(float(np.sqrt(np.mean(difference**2))), 3),
        }
        previews.append(run)
        print(f"  preview {run}", flush=True)
    return {
        "input": source,
        "input_seam_ratio": seam_ratio(volume.array, patch),
        "runs": runs,
        "previews": previews,
        "target": "preview <= 3 s; estimate_s within 30 % of engine_s",
    }


BENCHMARKS = {
    "overhead": bench_overhead,
    "throughput": bench_throughput,
    "sparse_dense": bench_sparse_dense,
    "steps": bench_steps,
    "memory": bench_memory,
    "endtoend": bench_endtoend,
    "reference": bench_reference,
    "costmodel": bench_costmodel,
    "levers": bench_levers,
}


# ---------------------------------------------------------------------------------------------------------
# set-up and report
# ---------------------------------------------------------------------------------------------------------


def random_checkpoint(folder: Path) -> Path:
    """The default architecture with random weights, in the CT denoising checkpoint format."""
    torch.manual_seed(0)
    model = SparseDiffusionUNet(ModelConfig())
    meta = build_meta(
        name="random-init-ct-denoise",
        task="denoise",
        modality="ct",
        model=ModelConfig(),
        schedule=ScheduleConfig(),
        patch_size=(16, 64, 64),
        background=-0.9,
        card={"summary": "random weights: for speed and memory benchmarks only"},
    )
    return save_checkpoint(model, meta, folder / "random-init-ct-denoise.safetensors")


def private_copy(card: ModelCard, folder: Path) -> ModelCard:
    """Copy the weights and JSON pair first, so a trainer rewriting them mid-run cannot be half read."""
    weights = Path(shutil.copy2(card.path, folder / card.path.name))
    shutil.copy2(card.path.with_suffix(".json"), weights.with_suffix(".json"))
    return read_card(weights)


def machine(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "sdenhance": __version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()),
        "cpu_amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_precisions(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["fp32", "bf16", "fp16"]
    return ["fp32", "bf16"] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else ["fp32"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="model name or .safetensors path (default: random-init default model)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads here and in the child processes")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="precision of every benchmark but overhead/throughput (default: the engine's auto choice)",
    )
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=["fp32", "bf16", "fp16"],
        help="precisions compared in overhead/throughput, differences against the first "
        "(default: fp32 and those the device has)",
    )
    p.add_argument("--batch", type=int, help="windows per network call (default: the engine's)")
    p.add_argument(
        "--channels-last",
        choices=["auto", "on", "off"],
        default="auto",
        help="channels-last 3D network in the in-process benchmarks (auto: the sampler's rule)",
    )
    p.add_argument("--steps", type=int, help="K (default: the checkpoint's)")
    p.add_argument("--quick", action="store_true", help="small volumes and fewer runs: minutes, not an hour")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run these benchmarks only")
    p.add_argument(
        "--scan", help=f"held-out scan, relative to --data-root (default {HELD_OUT_SCAN}; 'phantom' with --quick)"
    )
    p.add_argument("--data-root", type=Path, default=DATA_ROOT)
    p.add_argument(
        "--levers-scan", help=f"whole scan of costmodel/levers (default {LEVERS_SCAN}; 'phantom' with --quick)"
    )
    p.add_argument(
        "--lever-runs",
        nargs="+",
        type=_lever_run,
        default=[_lever_run(run) for run in LEVER_RUNS],
        metavar="STEPS:OVERLAP[:BACKEND]",
        help="runs of the levers benchmark, the first the reference (K: the K the checkpoint was trained for; "
        f"BACKEND: as enhance --backend, default auto; default {' '.join(LEVER_RUNS)})",
    )
    p.add_argument("--degradation", default=json.dumps(DEGRADATION), help="JSON degradation spec")
    p.add_argument("--dense-steps", type=int, help="steps of the dense chain (default 999; 20 with --quick)")
    p.add_argument(
        "--sparse-seeds",
        type=int,
        default=3,
        help="seeds of the sparse run in sparse_dense: the PSNR range over them is the sampling noise (default 3)",
    )
    p.add_argument("--sweep-steps", type=int, nargs="+", help="K values of the steps sweep")
    p.add_argument(
        "--sweep-overlaps",
        type=float,
        nargs="+",
        default=[0.125],
        help="window overlaps also tried at the default K in the steps sweep (default 0.125; 0.25 is the engine's)",
    )
    p.add_argument(
        "--memory-steps",
        type=int,
        default=2,
        help="K of the memory runs (peak RSS does not grow with K; 2 includes one update step)",
    )
    p.add_argument("--repeats", type=int, default=1, help="timed repeats in overhead/throughput (fastest kept)")
    p.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = p.parse_args(argv)
    if args.scan is None:
        args.scan = "phantom" if args.quick else HELD_OUT_SCAN
    if args.levers_scan is None:
        args.levers_scan = "phantom" if args.quick else LEVERS_SCAN
    return args


#: The default levers: PyTorch at today's default, then one lever at a time, then the backend `auto` picks.
LEVER_RUNS = ("K:0.25:torch", "1:0.25:torch", "1:0.1:torch", "1:0:torch", "1:0.1:auto")


def _lever_run(text: str) -> tuple[int | None, float, str]:
    """STEPS:OVERLAP[:BACKEND], STEPS K meaning the checkpoint's own, BACKEND auto unless given."""
    steps, overlap, backend = (text.split(":") + ["auto"])[:3]
    return (None if steps == "K" else int(steps)), float(overlap), backend


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible to PyTorch", file=sys.stderr)
        return 2
    args.precisions = args.precisions or default_precisions(device)
    args.precision = pick_precision(args.precision, device)  # the CLI children need a concrete one
    with tempfile.TemporaryDirectory(prefix="sdenhance-bench-") as tmp:
        work = Path(tmp)
        if args.checkpoint:
            card, trained = private_copy(resolve(args.checkpoint), work), True
        else:
            card, trained = read_card(random_checkpoint(work)), False
        if card.task != "denoise":
            print(f"error: {card.name} is a {card.task} checkpoint; the benchmarks use a denoiser", file=sys.stderr)
            return 2
        model, _ = load_model(card, device)
        ctx = Context(args, QUICK if args.quick else FULL, device, card, model, trained, work)
        results = {
            "machine": machine(device),
            "settings": {
                "checkpoint": card.name,
                "trained": trained,
                "training": {k: v for k, v in card.meta.get("training", {}).items() if k in ("steps", "step")},
                "device": device.type,
                "precision": args.precision,
                "precisions_compared": args.precisions,
                "quick": args.quick,
                "sampler": asdict(ctx.config()),
            },
        }
        for name in args.only or list(BENCHMARKS):
            print(f"== {name}", flush=True)
            load = os.getloadavg()[0]
            start = time.perf_counter()
            results[name] = BENCHMARKS[name](ctx)
            results[name]["benchmark_s"] = round(time.perf_counter() - start, 1)
            results[name]["loadavg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
            if args.out:
                args.out.write_text(json.dumps(results, indent=2, default=_plain) + "\n")
        print(summary(results))
    return 0


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def summary(results: dict) -> str:
    """The headline figures, one line each."""
    m, s = results["machine"], results["settings"]
    lines = [
        f"sdenhance {m['sdenhance']}, torch {m['torch']}, {m['cpu']}, {m['torch_threads']} threads, "
        f"device {s['device']}{' ' + m['gpu'] if 'gpu' in m else ''}, checkpoint {s['checkpoint']}"
        f"{'' if s['trained'] else ' (random weights: quality not meaningful)'}"
    ]
    if "overhead" in results:
        for p, r in results["overhead"]["by_precision"].items():
            lines.append(
                f"overhead {p}: {r['overhead']:.3f} ({r['sampling_s']} s / {r['evaluations']} x "
                f"{r['network_pass_s']} s)"
            )
    if "throughput" in results:
        for p, r in results["throughput"]["by_precision"].items():
            lines.append(f"throughput {p}: {r['voxels_per_s_per_step'] / 1e6:.3f} Mvoxel/s per step")
    if "sparse_dense" in results:
        r = results["sparse_dense"]
        lines.append(
            f"sparse vs dense: {r['speedup']}x faster, PSNR sparse - dense {r['psnr_sparse_minus_dense_db']}"
            f" dB (K={r['sparse']['steps']} vs {r['dense']['evaluations']} evaluations; PSNR range over "
            f"{r['sparse_seeds']} sparse seeds {r['sparse_seed_range_db']} dB)"
        )
    if "steps" in results:
        lines.append(f"steps sweep best: {results['steps']['best']}")
    if "memory" in results:
        r = results["memory"]
        runs = ", ".join(f"{'x'.join(map(str, x['shape_zyx']))}: {x['peak_rss_gb']} GB" for x in r["runs"])
        lines.append(f"memory peak RSS {runs}; growth {r['growth_bytes_per_voxel']} B/voxel")
    if "endtoend" in results:
        r = results["endtoend"]
        lines.append(
            f"end-to-end {'x'.join(map(str, r['shape_zyx']))}: {r['wall_s']} s wall "
            f"({r['engine_s']} s in the engine), peak RSS {r['peak_rss_gb']} GB"
        )
    if "costmodel" in results:
        r = results["costmodel"]
        lines.append(
            f"cost model {r['input']}: {r['flops_per_window_pass'] / 1e9:.2f} GFLOP per pass per window, "
            f"{r['network_gflops_per_s']} GFLOP/s here; "
            + ", ".join(
                f"K={x['steps']}{'+Heun' if x['heun'] else ''} overlap {x['overlap']}: "
                f"{x['flops_per_voxel']} FLOP/voxel ({x['predicted_s']} s)"
                for x in r["rows"]
            )
        )
    if "levers" in results:
        for x in results["levers"]["runs"] + results["levers"]["previews"]:
            kind = "preview" if "preview" in x else "run"
            lines.append(
                f"levers {kind} K={x['steps']} overlap {x['overlap']} {x['backend']}: {x['engine_s']} s "
                f"(estimated {x['estimate_s']}),"
                f" {x['peak_rss_gb']} GB, vs first {x.get('vs_first', {}).get('psnr_window', '-')} dB"
            )
    if "reference" in results:
        for v in results["reference"]["volumes"]:
            lines.append(
                f"reference {'x'.join(map(str, v['shape_zyx']))}: ours {v['ours_tflops']} TFLOP, "
                f"stand-in {v['reference_tflops']} TFLOP ({v['ratio_reference_over_ours']}x)"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
