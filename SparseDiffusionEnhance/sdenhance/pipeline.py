"""Enhance one volume end to end: checks, SR target grid, normalisation, sampling, inverse, geometry."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .backend import pick_backend
from .checkpoint import load_model, schedule_of
from .errors import CheckpointError, VolumeError
from .io import AXIS_TO_NUMPY, Volume, sr_model_input, validate_intensities
from .normalize import Normalizer, output_dtype
from .registry import MAX_SAMPLES, ModelCard, check_fits
from .sampler import (
    ProgressFn,
    SamplerConfig,
    covering_slab,
    evaluations,
    foreground_windows,
    sample,
    sampling_input,
    seconds_per_window,
)


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
    backend: str = "auto"  # torch | openvino | auto (see backend.pick_backend)
    skip_background: bool = True
    channels_last: bool | None = None  # channels-last 3D network; None: only where it was measured faster
    # enhance only the slab of windows around this input slice along the model's through-plane axis ("middle")
    preview: int | str | None = None
    # intensity scaling fitted on the whole scan a crop was cut from (evaluation); default: fitted on the input
    normalizer: Normalizer | None = None


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
    precision = pick_precision(options.precision, device)
    return SamplerConfig(
        steps=_checked_counts(card, options),
        heun=options.heun,
        patch_size=patch,
        overlap=options.overlap,
        sw_batch_size=options.sw_batch_size or (16 if device.type == "cuda" else 4),
        seed=options.seed,
        precision=precision,
        backend=pick_backend(options.backend, device, precision),
        channels_last=options.channels_last,
        background=card.meta.get("background") if options.skip_background else None,
    )


#: Seeds torch's generator takes (64-bit), less one per extra sample (sample i uses seed + i).
MAX_SEED = 2**63 - 1 - MAX_SAMPLES


def default_steps(card: ModelCard) -> int:
    """The K a model samples with unless told otherwise: its card's ``sampling_steps`` where measuring showed
    fewer passes to be as good (e.g. one pass for denoising), else the K it was trained on."""
    return int(card.meta.get("sampling_steps") or card.meta["schedule"]["steps"])


def _checked_counts(card: ModelCard, options: EnhanceOptions) -> int:
    """The sparse steps K to sample with; refuses steps, batch and seed values that no run can use."""
    schedule = card.meta["schedule"]
    steps = default_steps(card) if options.steps is None else options.steps
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
    swap: tuple[int, int]  # the output array axes swapped so that the model sees its trained SR axis
    slab_axis: int  # the output array axis the model sees as its first, through-plane, axis
    slab: tuple[int, int]  # the output's slices [start, stop) along slab_axis: all of them but for a preview

    @property
    def evaluations(self) -> int:
        return evaluations(self.sampler) * self.samples

    @property
    def slab_axis_name(self) -> str:
        return next(name for name, numpy_axis in AXIS_TO_NUMPY.items() if numpy_axis == self.slab_axis)


def plan_enhancement(volume: Volume, card: ModelCard, options: EnhanceOptions) -> Plan:
    """Validate the request against the volume and checkpoint; raises VolumeError / CheckpointError."""
    validate_intensities(volume.array)
    if not 1 <= options.samples <= MAX_SAMPLES:
        raise VolumeError(f"samples {options.samples} must be between 1 and {MAX_SAMPLES}")
    modality, factor, axis = check_compatible(card, options)
    device = pick_device(options.device)
    config = sampler_config(card, options, device)
    # an SR model learnt one through-plane axis; other axes are swapped into its place and back
    swap = (AXIS_TO_NUMPY[axis], AXIS_TO_NUMPY[card.meta["sr_axis"]]) if factor else (0, 0)
    slab_axis = swap[1] if swap[0] == 0 else swap[0] if swap[1] == 0 else 0
    shape = list(volume.array.shape)
    if factor:
        shape[AXIS_TO_NUMPY[axis]] *= factor
    depth = shape[slab_axis]
    slab = (0, depth)
    if options.preview is not None:
        scale = factor if factor and slab_axis == AXIS_TO_NUMPY[axis] else 1
        first = _preview_slice(options.preview, volume.array.shape[slab_axis]) * scale
        slab = covering_slab(depth, first, first + scale, config.patch_size[0], config.overlap)
    shape[slab_axis] = slab[1] - slab[0]
    return Plan(modality, factor, axis, device, config, tuple(shape), options.samples, swap, slab_axis, slab)


def _preview_slice(preview: int | str, slices: int) -> int:
    """The input slice a preview is centred on: an index, or "middle"."""
    if preview == "middle":
        return slices // 2
    if isinstance(preview, str) or not 0 <= preview < slices:
        raise VolumeError(f"--preview {preview}: give a slice index from 0 to {slices - 1}, or no value for the middle")
    return preview


#: Sample i flips the input along these (z, y, x) axes and back. The model was trained with random flips on
#: every axis, so each flip is an equally valid view: the samples differ by flip as well as by seed, their mean
#: averages out the model's own errors and their spread shows where it is unsure.
FLIPS = [(), (2,), (1,), (0,), (1, 2), (0, 2), (0, 1), (0, 1, 2)]


@dataclass(frozen=True)
class Enhanced:
    volume: Volume  # in the input's units and dtype; the mean of the samples
    spread: Volume | None  # per-voxel standard deviation across samples (float32, input units); None for 1 sample
    sampler: SamplerConfig  # the settings it was sampled with (K, precision auto resolved, ...)


@dataclass(frozen=True)
class SampleRun:
    """One sample of a run: its view of the volume (a flip), its seed, and the slab of z-windows it samples."""

    flip: tuple[int, ...]
    config: SamplerConfig
    region: tuple[int, int]  # slices the sampler runs on, in the flipped volume (see covering_slab)
    offset: int  # where the plan's slab starts in this sample's flipped-back result


class Enhancement:
    """One run, planned and prepared (input normalised, model loaded): ``estimate_seconds()`` says how long
    ``run()`` will take before it starts. ``model``: weights already in memory that ``card`` describes (the
    trainer's, a benchmark's), used instead of loading the card's file."""

    def __init__(self, volume: Volume, card: ModelCard, options: EnhanceOptions, model: torch.nn.Module | None = None):
        self.plan = plan = plan_enhancement(volume, card, options)
        self.card = card
        self.dtype = output_dtype(volume.array.dtype, plan.modality)
        self.target = volume if plan.factor is None else sr_model_input(volume, plan.factor, plan.axis)
        self.normalizer = options.normalizer or Normalizer.fit(self.target.array, plan.modality)
        self.y = np.swapaxes(self.normalizer.forward(self.target.array), *plan.swap)
        spacing_zyx = list(reversed(self.target.spacing))
        a, b = plan.swap
        spacing_zyx[a], spacing_zyx[b] = spacing_zyx[b], spacing_zyx[a]
        self.spacing_zyx = tuple(spacing_zyx)
        self.model = load_model(card, plan.device)[0] if model is None else model.to(plan.device).eval()
        self.runs = [self._sample_run(i, flip) for i, flip in enumerate(FLIPS[: plan.samples])]

    def _sample_run(self, index: int, flip: tuple[int, ...]) -> SampleRun:
        config = replace(self.plan.sampler, seed=self.plan.sampler.seed + index)
        if 0 not in flip:
            return SampleRun(flip, config, self.plan.slab, 0)
        # a flipped volume has a window grid of its own: its windows that hold any of the mirrored slab
        depth, (start, stop) = self.y.shape[0], self.plan.slab
        region = covering_slab(depth, depth - stop, depth - start, config.patch_size[0], config.overlap)
        return SampleRun(flip, config, region, start - (depth - region[1]))

    def estimate_seconds(self) -> float:
        """Seconds ``run()`` will take: the windows each sample runs the network on (background ones are
        skipped) times the network and content-encoding seconds per window, timed on one batch of real
        windows after a warm-up call."""
        t = max(schedule_of(self.card).sparse_timesteps(self.plan.sampler.steps))
        seconds, per_window = 0.0, None
        for run in self.runs:
            y_t = sampling_input(np.flip(self.y, run.flip), run.config.patch_size, run.region)
            windows = foreground_windows(y_t, run.config)
            if windows:
                per_window = per_window or seconds_per_window(
                    self.model, y_t, windows, self.spacing_zyx, run.config, self.plan.device, t
                )
                forward_s, content_s = per_window
                seconds += len(windows) * (evaluations(run.config) * forward_s + content_s)
        return seconds

    def run(self, progress: ProgressFn | None = None) -> Enhanced:
        """The enhanced volume on the input grid (denoise) or the finer SR grid, cut to the plan's slab, and with
        several samples their spread."""
        plan = self.plan
        depth = plan.slab[1] - plan.slab[0]
        mean, sum_sq = None, np.float32(0)
        for i, run in enumerate(self.runs):
            y = np.flip(self.y, run.flip)
            share = _share(progress, i, plan.samples)
            x0 = sample(
                self.model, schedule_of(self.card), y, self.spacing_zyx, run.config, plan.device, share, run.region
            )
            x = self.normalizer.inverse(np.flip(x0, run.flip)[run.offset : run.offset + depth])
            if mean is None:  # one sample needs no extra buffer
                mean = x
                continue
            delta = x - mean  # Welford's running mean and sum of squares: two buffers, whatever the sample count
            mean += delta / (i + 1)
            sum_sq += delta * (x - mean)
        integer = np.issubdtype(self.dtype, np.integer)
        result = np.swapaxes(np.rint(mean) if integer else mean, *plan.swap)
        spread = None
        if plan.samples > 1:
            spread = self._on_output_grid(np.swapaxes(np.sqrt(sum_sq / (plan.samples - 1)), *plan.swap), np.float32)
        return Enhanced(self._on_output_grid(result, self.dtype), spread, plan.sampler)

    def _on_output_grid(self, array: np.ndarray, dtype) -> Volume:
        """``array`` on the target grid, with the origin moved to the plan's slab (geometry kept exact)."""
        start_xyz = [0, 0, 0]
        start_xyz[2 - self.plan.slab_axis] = self.plan.slab[0]
        origin = self.target.index_to_physical(np.array([start_xyz], dtype=float))[0]
        return replace(self.target, array=array.astype(dtype), origin=tuple(origin.tolist()))


def enhance_volume(
    volume: Volume,
    card: ModelCard,
    options: EnhanceOptions,
    progress: ProgressFn | None = None,
    model: torch.nn.Module | None = None,
) -> Enhanced:
    """The enhanced volume on the input grid (denoise) or the finer SR grid (a slab of it for a preview), and
    with several samples their spread."""
    return Enhancement(volume, card, options, model).run(progress)


def _share(progress: ProgressFn | None, index: int, samples: int) -> ProgressFn | None:
    """Progress of sample ``index`` as a share of the whole run of ``samples`` samples."""
    if progress is None:
        return None
    return lambda done, total: progress(index * total + done, total * samples)
