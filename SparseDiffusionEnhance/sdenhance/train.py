"""Sparse-timestep trainer: ``sdenhance train --config CONFIG.yaml``.

Loss: velocity-space MSE with the true noise at timesteps drawn from the sparse set (``--schedule dense``
draws from all T, the ablation baseline). AdamW, EMA weights, gradient clipping, bf16 autocast on CUDA.
Every ``ckpt_every`` steps the full training state (model, EMA, optimiser, step, every RNG including the
patch stream's) is saved to ``state.pt`` so ``--resume`` continues exactly as if uninterrupted, and the EMA
weights are exported as a checkpoint. Validation runs the real whole-volume sampler on held-out scans.

Distributed: under ``torchrun --nproc_per_node N`` the model is wrapped in DistributedDataParallel (gloo on
CPU, nccl on CUDA); each rank draws its own patches, rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.optim.swa_utils import AveragedModel

from .checkpoint import build_meta, save_checkpoint
from .config import TrainConfig
from .data import PatchSampler, load_pairs
from .degrade import make_degradation
from .errors import InputError
from .evaluate import OURS, Setup, prepare_case, run_ours
from .io import read_volume
from .metrics import headline, quality
from .model import SparseDiffusionUNet, count_parameters
from .registry import ModelCard
from .schedule import NoiseSchedule, q_sample, v_space_loss

STATE_FILE = "state.pt"


@dataclass
class Run:
    """The mutable training state that ``state.pt`` captures."""

    model: torch.nn.Module
    ema: AveragedModel
    optimizer: torch.optim.Optimizer
    sampler: PatchSampler
    step: int = 0


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            torch.cuda.set_device(device)
    return (dist.get_rank() if world > 1 else 0), world, device


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then constant (training can be extended without a new schedule); with ``lr_decay``, a
    cosine from ``lr`` at its start step to ``final`` at its end step, and ``final`` after. A pure function of
    the step, so resuming follows the same schedule."""
    lr = config.lr * min(1.0, (step + 1) / max(config.warmup_steps, 1))
    decay = config.lr_decay
    if decay is None or step < decay["start"]:
        return lr
    progress = min(1.0, (step - decay["start"]) / max(decay["end"] - decay["start"], 1))
    return decay["final"] + (config.lr - decay["final"]) * 0.5 * (1 + math.cos(math.pi * progress))


def ema_update(decay: float):
    """EMA with warm-up: the effective decay (1 + n) / (10 + n) grows to ``decay``, so early checkpoints are not
    dragged towards the untrained initial weights (a fixed 0.999 still weighs them 37 % after 1000 steps)."""

    def update(ema_params, params, num_averaged) -> None:
        n = float(num_averaged)
        torch._foreach_lerp_(ema_params, params, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    return update


def random_state(run: Run) -> dict:
    """This process's random streams: torch's (and CUDA's), Python's and the patch stream's. Each rank has its
    own, so each is saved: a resumed run draws what the uninterrupted one would have on every rank."""
    streams = {"torch_rng": torch.get_rng_state(), "python_rng": list(random.getstate()[1])}
    if torch.cuda.is_available():
        streams["cuda_rng"] = torch.cuda.get_rng_state()
    return streams | {"patches": run.sampler.state()}


def save_state(run: Run, path: Path, ranks: list[dict]) -> None:
    """Everything ``--resume`` needs, ``ranks`` holding every process's ``random_state``."""
    state = {
        "model": run.model.state_dict(),
        "ema": run.ema.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "step": run.step,
        "world_size": len(ranks),
        "ranks": ranks,
    }
    tmp = path.with_name(path.name + ".partial")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(run: Run, path: Path, rank: int, world: int) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    # states written before per-rank streams hold rank 0's torch and Python streams and every rank's patches
    ranks = state.get("ranks") or [
        {"torch_rng": state["torch_rng"], "python_rng": state["python_rng"], "patches": patches}
        for patches in state["samplers"]
    ]
    if len(ranks) != world:
        raise InputError(
            f"{path} was written by {len(ranks)} training process(es), this run has {world}: resume with "
            f"--nproc_per_node {len(ranks)}, or start a new run from its weights with --init-from"
        )
    run.model.load_state_dict(state["model"])
    run.ema.load_state_dict(state["ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.step = int(state["step"])
    mine = ranks[rank]
    torch.set_rng_state(mine["torch_rng"])
    if "cuda_rng" in mine and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["cuda_rng"])
    random.setstate((3, tuple(mine["python_rng"]), None))
    run.sampler.restore(mine["patches"])


def warm_start(run: Run, name_or_path: str) -> None:
    """Model and EMA weights from a checkpoint (strict: the architecture must match the config's)."""
    from .checkpoint import load_model
    from .registry import resolve

    source, _ = load_model(resolve(name_or_path))
    try:
        run.model.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"init_from {name_or_path} does not match the config's model settings: {exc}") from exc
    run.ema.module.load_state_dict(source.state_dict(), strict=True)


def checkpoint_meta(config: TrainConfig, training: dict | None = None) -> dict:
    """The JSON card of the checkpoint this config trains (``training``: what the run did so far)."""
    return build_meta(
        name=config.name,
        task=config.task,
        modality=config.modality,
        model=config.model,
        schedule=config.schedule,
        patch_size=config.patch_size,
        sr_factor=config.sr_factor,
        sr_axis=config.sr_axis,
        background=config.background,
        sampling_steps=config.sampling_steps,
        training=training,
        card=config.card,
    )


def export_checkpoint(config: TrainConfig, run: Run, out_dir: Path, metrics: dict, dense: bool) -> Path:
    """The EMA weights as NAME.safetensors + NAME.json in ``out_dir``."""
    training = {
        "steps": run.step,
        "timesteps_drawn": "dense" if dense else "sparse",
        "degradation": config.degradation,
        "patch_degradation": config.patch_degradation,
        "patch_share": config.patch_share,
        "init_from": config.init_from,
        "train_files": config.train_files,
        "val_files": config.val_files,
        "patch_size": list(config.patch_size),
        "batch_size": config.batch_size,
        "spacing_zyx": [list(p.spacing_zyx) for p in run.sampler.pairs],
        "validation": metrics,
    }
    return save_checkpoint(run.ema.module, checkpoint_meta(config, training), out_dir / f"{config.name}.safetensors")


class Validator:
    """Held-out cases prepared exactly as `sdenhance evaluate` prepares them (same seeds, crops and normaliser
    fits), enhanced as `sdenhance enhance` would with the weights being trained, and scored the same way; so a
    validation figure is the figure `evaluate --backend torch` will report for the exported checkpoint (PyTorch:
    an OpenVINO graph would be converted anew at every validation, as the weights change)."""

    def __init__(self, config: TrainConfig, weights_path: Path):
        self.card = ModelCard(config.name, weights_path, checkpoint_meta(config))
        crop = tuple(config.val_crop) if config.val_crop else None
        # the headline degradation keeps the plain file name as the case name, each family adds "|label"
        families = {"": config.val_degradation or config.degradation, **config.val_families}
        setups = {
            label: Setup(
                spec=spec, modality=config.modality, methods=(OURS,), card=self.card, crop=crop, backend="torch"
            )
            for label, spec in families.items()
        }
        key = headline(config.modality)
        self.cases = []  # (case, its setup, the input's headline score: the same at every validation)
        for i, path in enumerate(config.paths(config.val_files)):
            volume = read_volume(path)
            for label, setup in setups.items():
                name = f"{path.name}|{label}" if label else path.name
                case = prepare_case(name, volume, setup, np.random.default_rng([setup.seed, i]))
                degraded = quality(case.reference.array, case.degraded.array, config.modality)[key]
                self.cases.append((case, setup, {f"degraded_{key}": degraded}))

    def __call__(self, model: torch.nn.Module) -> dict:
        return {case.name: run_ours(case, setup, model).scores | degraded for case, setup, degraded in self.cases}


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal digests mean bit-identical weights."""
    h = hashlib.sha256()
    for _, tensor in sorted(model.state_dict().items()):
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train(
    config: TrainConfig,
    output: Path,
    resume: bool = False,
    max_steps: int | None = None,
    time_budget_s: float | None = None,
    dense: bool = False,
    progress: bool = True,
) -> dict:
    """Train (or continue) and return a summary; writes state.pt, log.csv, val.csv and the checkpoint.

    A new run with ``config.init_from`` starts from that checkpoint's weights with a fresh optimiser: how training
    continues on a machine that has the shipped weights but not the trainer state.
    """
    rank, world, device = setup_distributed()
    output.mkdir(parents=True, exist_ok=True)
    max_steps = config.max_steps if max_steps is None else max_steps
    torch.manual_seed(config.seed + rank)
    random.seed(config.seed + rank)
    pairs = load_pairs(
        config.paths(config.train_files),
        config.modality,
        config.degradation,
        config.realisations,
        config.seed,
        output / "cache",
    )
    model = SparseDiffusionUNet(config.model).to(device)
    ema = AveragedModel(model, multi_avg_fn=ema_update(config.ema_decay))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    patches = PatchSampler(
        pairs,
        config.patch_size,
        config.modality,
        config.seed + 1000 * rank,
        patch_degradation=make_degradation(config.patch_degradation) if config.patch_degradation else None,
        patch_share=config.patch_share,
    )
    run = Run(model, ema, optimizer, patches)
    if resume and (output / STATE_FILE).is_file():
        load_state(run, output / STATE_FILE, rank, world)
    elif config.init_from is not None:
        warm_start(run, config.init_from)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    schedule = NoiseSchedule(config.schedule)
    timesteps = schedule.training_timesteps(dense)
    validator = Validator(config, output / f"{config.name}.safetensors") if rank == 0 and config.val_files else None
    log_header = ["step", "loss", "lr", "step_s", "patches_per_s"]
    log = _CsvLog(output / "log.csv", log_header, next_step=run.step + 1) if rank == 0 else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    bar = _progress_bar(run.step, max_steps) if progress and rank == 0 else None
    started, last_metrics, losses = time.monotonic(), {}, []
    while run.step < max_steps and (time_budget_s is None or time.monotonic() - started < time_budget_s):
        tick = time.monotonic()
        batch = {k: v.to(device) for k, v in run.sampler.batch(config.batch_size).items()}
        target = batch["target"]
        t = timesteps[torch.randint(len(timesteps), (target.shape[0],))].to(device)
        eps = torch.randn_like(target)
        abar = schedule.abar(t, like=target)
        with autocast:
            x0_hat = net(q_sample(target, eps, abar), batch["image"], t, batch["spacing"])
        loss = v_space_loss(x0_hat.float(), target, eps, abar)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(run.step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        ema.update_parameters(model)
        run.step += 1
        losses.append(loss.item())
        step_s = time.monotonic() - tick
        if log and run.step % config.log_every == 0:
            log.write(
                [
                    run.step,
                    float(np.mean(losses)),
                    lr_at(run.step - 1, config),
                    step_s,
                    world * config.batch_size / step_s,
                ]
            )
            losses = []
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.2e}")
        if validator and (run.step % config.val_every == 0 or run.step == max_steps):
            last_metrics = _validate(validator, ema.module, output, run.step)
        if run.step % config.ckpt_every == 0:
            _checkpoint(config, run, output, last_metrics, dense, world, rank)
    if validator and not last_metrics:
        last_metrics = _validate(validator, ema.module, output, run.step)
    _checkpoint(config, run, output, last_metrics, dense, world, rank)
    if bar is not None:
        bar.close()
    digests = _gather(weights_digest(model), world)
    summary = {
        "step": run.step,
        "parameters": count_parameters(model),
        "seconds": round(time.monotonic() - started, 1),
        "validation": last_metrics,
        "rank_digests": digests,
    }
    if rank == 0:
        (output / "summary.yaml").write_text(yaml.safe_dump(summary, sort_keys=False), encoding="utf-8")
    if world > 1:
        dist.destroy_process_group()
    return summary


def _validate(validator: Validator, model, output: Path, step: int) -> dict:
    scores = validator(model)
    log = _CsvLog(output / "val.csv", ["step", "case", "metric", "value"], next_step=step)
    for case, values in scores.items():
        for metric, value in values.items():
            log.write([step, case, metric, value])
    return scores


def _checkpoint(config, run: Run, output: Path, metrics: dict, dense: bool, world: int, rank: int) -> None:
    ranks = _gather(random_state(run), world)
    if rank == 0:
        save_state(run, output / STATE_FILE, ranks)
        export_checkpoint(config, run, output, metrics, dense)


def _gather(value, world: int) -> list:
    if world == 1:
        return [value]
    values = [None] * world
    dist.all_gather_object(values, value)
    return values


def _progress_bar(start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", desc="training", dynamic_ncols=True)


class _CsvLog:
    """A CSV log that a resumed run continues. Rows from ``next_step`` on were written after the last state save by
    a run that then stopped; the resumed run redoes those steps, so they are dropped rather than listed twice."""

    def __init__(self, path: Path, header: list[str], next_step: int):
        self.path = path
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines())) if path.exists() else []
        kept = [row for row in rows[1:] if int(row[0]) < next_step]
        if not rows or len(kept) < len(rows) - 1:
            with path.open("w", newline="") as f:
                csv.writer(f).writerows([header, *kept])

    def write(self, row: list) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
