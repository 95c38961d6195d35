"""Enhance one volume end to end: checks, SR target grid, normalisation, sampling, inverse, geometry."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .checkpoint import load_model, schedule_of
from .errors import CheckpointError, VolumeError
from .io import AXIS_TO_NUMPY, Volume, sr_model_input, validate_intensities
from .normalize import Normalizer, output_dtype
from .registry import MAX_SAMPLES, ModelCard, check_fits
from .sampler import ProgressFn, SamplerConfig, evaluations, sample


@dataclass(frozen=True)
class EnhanceOptions:
    task: str = "denoise"
    factor: int | None = None  # SR: defaults to the checkpoint's
    axis: str | None = None  # SR: defaults to the checkpoint's
    modality: str | None = None  # defaults to the checkpoint's
    steps: int | None = None  # defaults to the checkpoint's K
    heun: bool = False
    seed: int = 0
    samples: int = 1  # >1: the mean of that many samples, and their spread as an uncertainty map
    device: str = "auto"
    patch: tuple[int, int, int] | None = None  # defaults to the training patch
    overlap: float = 0.25
    sw_batch_size: int | None = None
    precision: str = "auto"  # fp32 | bf16 | fp16 | auto (see pick_precision)
    skip_background: bool = True


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VolumeError("--device cuda was asked for but no CUDA GPU is visible to PyTorch; use --device cpu")
    return torch.device(name)


def pick_precision(name: str, device: torch.device) -> str:
    """``auto`` is bf16 autocast on CPUs with native bf16 arithmetic (AMX, AVX512-BF16), where scripts/benchmark.py
    measured it faster than float32 at the same quality (figures: README, Performance); float32 elsewhere (CPUs
    that would emulate bf16, CUDA) until measured there."""
    if name != "auto":
        return name
    return "bf16" if device.type == "cpu" and has_native_bf16() else "fp32"


def has_native_bf16() -> bool:
    """AMX tiles or AVX512-BF16 instructions (torch.cpu's private probes; absent probes count as no)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def sampler_config(card: ModelCard, options: EnhanceOptions, device: torch.device) -> SamplerConfig:
    """Sampling settings: the user's where given, else the checkpoint's defaults."""
    multiple = 2 ** (len(card.meta["model"]["channels"]) - 1)
    patch = tuple(options.patch or card.meta["patch_size"])
    if len(patch) != 3 or any(p < multiple or p % multiple for p in patch):
        raise VolumeError(f"patch size {patch}: each side must be a positive multiple of {multiple}")
    if not 0 <= options.overlap < 1:
        raise VolumeError(f"overlap {options.overlap} must be in [0, 1)")
    return SamplerConfig(
        steps=_checked_counts(card, options),
        heun=options.heun,
        patch_size=patch,
        overlap=options.overlap,
        sw_batch_size=options.sw_batch_size or (16 if device.type == "cuda" else 4),
        seed=options.seed,
        precision=pick_precision(options.precision, device),
        background=card.meta.get("background") if options.skip_background else None,
    )


#: Seeds torch's generator takes (64-bit), less one per extra sample (sample i uses seed + i).
MAX_SEED = 2**63 - 1 - MAX_SAMPLES


def _checked_counts(card: ModelCard, options: EnhanceOptions) -> int:
    """The sparse steps K to sample with; refuses steps, batch and seed values that no run can use."""
    schedule = card.meta["schedule"]
    steps = schedule["steps"] if options.steps is None else options.steps
    if not 1 <= steps < schedule["timesteps"]:
        raise VolumeError(
            f"--steps {steps} must be between 1 and {schedule['timesteps'] - 1} "
            f"(the model was trained for {schedule['steps']})"
        )
    if options.sw_batch_size is not None and options.sw_batch_size < 1:
        raise VolumeError(f"--batch {options.sw_batch_size} must be at least 1")
    if not 0 <= options.seed <= MAX_SEED:
        raise VolumeError(f"--seed {options.seed} must be between 0 and {MAX_SEED}")
    return steps


def untrained_timesteps_warning(card: ModelCard, steps: int) -> str | None:
    """A warning when sampling with ``steps`` evaluates the model at timesteps its training never drew (a
    sparse-trained model saw only its own K's set); None for the trained K, for K values whose timesteps are
    a subset of it (K = 1 evaluates t = T - 1 only), and for a densely trained model."""
    if card.meta.get("training", {}).get("timesteps_drawn", "sparse") == "dense":
        return None
    schedule = schedule_of(card)
    trained = set(schedule.sparse_timesteps()[1:])
    unseen = sorted(set(schedule.sparse_timesteps(steps)[1:]) - trained)
    if not unseen:
        return None
    fitting = [k for k in range(1, schedule.config.steps + 1) if set(schedule.sparse_timesteps(k)[1:]) <= trained]
    shown = ", ".join(map(str, unseen[:6])) + (", ..." if len(unseen) > 6 else "")
    return (
        f"--steps {steps} evaluates '{card.name}' at timesteps it was never trained on ({shown}; trained: "
        f"{', '.join(map(str, sorted(trained)))}), so the result may be worse; use --steps "
        f"{' or '.join(map(str, fitting))}"
    )


def check_compatible(card: ModelCard, options: EnhanceOptions) -> tuple[str, int | None, str | None]:
    """Modality, SR factor and axis to use; refuses a checkpoint that does not fit the request."""
    check_fits(card, options.task, options.factor)
    modality = options.modality or card.modality
    if modality != card.modality:
        raise CheckpointError(
            f"checkpoint '{card.name}' was trained on {card.modality.upper()}, but the input is "
            f"{modality.upper()}; pick a {modality.upper()} checkpoint"
        )
    if options.task != "sr":
        return modality, None, None
    factor = card.meta["sr_factor"]
    axis = options.axis or card.meta["sr_axis"]
    if axis not in AXIS_TO_NUMPY:
        raise VolumeError(f"axis '{axis}' must be x, y or z")
    return modality, factor, axis


@dataclass(frozen=True)
class Plan:
    """Everything decided before sampling starts (and reported to the user)."""

    modality: str
    factor: int | None
    axis: str | None
    device: torch.device
    sampler: SamplerConfig
    output_shape: tuple[int, int, int]
    samples: int

    @property
    def evaluations(self) -> int:
        return evaluations(self.sampler) * self.samples


def plan_enhancement(volume: Volume, card: ModelCard, options: EnhanceOptions) -> Plan:
    """Validate the request against the volume and checkpoint; raises VolumeError / CheckpointError."""
    validate_intensities(volume.array)
    if not 1 <= options.samples <= MAX_SAMPLES:
        raise VolumeError(f"samples {options.samples} must be between 1 and {MAX_SAMPLES}")
    modality, factor, axis = check_compatible(card, options)
    device = pick_device(options.device)
    shape = list(volume.array.shape)
    if factor:
        shape[AXIS_TO_NUMPY[axis]] *= factor
    return Plan(modality, factor, axis, device, sampler_config(card, options, device), tuple(shape), options.samples)


#: Sample i flips the input along these (z, y, x) axes and back. The model was trained with random flips on
#: every axis, so each flip is an equally valid view: the samples differ by flip as well as by seed, their mean
#: averages out the model's own errors and their spread shows where it is unsure.
FLIPS = [(), (2,), (1,), (0,), (1, 2), (0, 2), (0, 1), (0, 1, 2)]


@dataclass(frozen=True)
class Enhanced:
    volume: Volume  # in the input's units and dtype; the mean of the samples
    spread: Volume | None  # per-voxel standard deviation across samples (float32, input units); None for 1 sample
    sampler: SamplerConfig  # the settings it was sampled with (K, precision auto resolved, ...)


def enhance_volume(
    volume: Volume, card: ModelCard, options: EnhanceOptions, progress: ProgressFn | None = None
) -> Enhanced:
    """The enhanced volume on the input grid (denoise) or the finer SR grid, and with several samples their
    spread."""
    plan = plan_enhancement(volume, card, options)
    factor, axis = plan.factor, plan.axis
    target = volume if factor is None else sr_model_input(volume, factor, axis)
    normalizer = Normalizer.fit(target.array, plan.modality)
    # an SR model learnt one through-plane axis; other axes are swapped into its place and back
    swap = (AXIS_TO_NUMPY[axis], AXIS_TO_NUMPY[card.meta["sr_axis"]]) if factor else (0, 0)
    y = np.swapaxes(normalizer.forward(target.array), *swap)
    spacing_zyx = list(reversed(target.spacing))
    spacing_zyx[swap[0]], spacing_zyx[swap[1]] = spacing_zyx[swap[1]], spacing_zyx[swap[0]]
    model, _ = load_model(card, plan.device)
    mean, sum_sq = None, np.float32(0)
    for i, flip in enumerate(FLIPS[: plan.samples]):
        config = replace(plan.sampler, seed=plan.sampler.seed + i)
        x0 = sample(
            model,
            schedule_of(card),
            np.flip(y, flip),
            tuple(spacing_zyx),
            config,
            plan.device,
            _share(progress, i, plan.samples),
        )
        x = normalizer.inverse(np.flip(x0, flip))
        if mean is None:  # one sample needs no extra buffer
            mean = x
            continue
        delta = x - mean  # Welford's running mean and sum of squares: two buffers, whatever the sample count
        mean += delta / (i + 1)
        sum_sq += delta * (x - mean)
    dtype = output_dtype(volume.array.dtype, plan.modality)
    result = np.swapaxes(np.rint(mean) if np.issubdtype(dtype, np.integer) else mean, *swap)
    spread = None
    if plan.samples > 1:
        spread = target.with_array(np.swapaxes(np.sqrt(sum_sq / (plan.samples - 1)), *swap).astype(np.float32))
    return Enhanced(target.with_array(result.astype(dtype)), spread, plan.sampler)


def _share(progress: ProgressFn | None, index: int, samples: int) -> ProgressFn | None:
    """Progress of sample ``index`` as a share of the whole run of ``samples`` samples."""
    if progress is None:
        return None
    return lambda done, total: progress(index * total + done, total * samples)
