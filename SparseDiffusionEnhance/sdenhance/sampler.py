"""Whole-volume sampling on the sparse timestep set.

Three separate pieces, each tested on its own:
- ``sampling_pairs``: the explicit (t, t_next) transitions over the sparse set, ending at the smallest
  non-zero timestep (the model is never evaluated at t = 0 or t = -1; its x0 estimate there is the output);
- ``ddim_step`` / ``heun_step``: the deterministic update rules on whole volumes;
- ``PatchDenoiser``: one x0 estimate over the whole volume, from overlapping patches of exactly the training
  size blended with Gaussian weights (MONAI ``sliding_window_inference``), stitched in float32 on the CPU.
  The STM content code depends only on the degraded input, so it is computed once per patch and reused at
  every step; patches that are all background return the degraded input unchanged.

``sample`` can also run on a slab of z-windows only (``covering_slab``: a preview of a few slices), and
``foreground_windows`` with ``seconds_per_window`` say what a run will cost before it starts.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference

from .backend import OpenVINONetwork
from .model import SparseDiffusionUNet
from .schedule import NoiseSchedule, eps_from_x0, q_sample

ProgressFn = Callable[[int, int], None]  # (windows done, windows in the whole run)


@dataclass(frozen=True)
class SamplerConfig:
    steps: int = 5  # K: network evaluations without Heun
    heun: bool = False
    patch_size: tuple[int, int, int] = (16, 64, 64)  # (z, y, x); the training patch size
    overlap: float = 0.25
    sw_batch_size: int = 4
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast for the network only)
    channels_last: bool | None = None  # channels-last 3D network; None: only where it was measured faster
    background: float | None = None  # windows whose degraded input is entirely below this are skipped
    backend: str = "torch"  # torch | openvino (CPU float32; see backend.pick_backend)


def sampling_pairs(timesteps: list[int]) -> list[tuple[int, int]]:
    """(t, t_next) transitions from the largest to the smallest non-zero timestep of a sparse set."""
    nonzero = sorted((t for t in timesteps if t > 0), reverse=True)
    if not nonzero:
        raise ValueError("the timestep set needs at least one non-zero timestep")
    return list(zip(nonzero[:-1], nonzero[1:], strict=True))


def ddim_step(x_t: torch.Tensor, x0: torch.Tensor, abar: float, abar_next: float) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) move from t to t_next given the x0 estimate at t."""
    eps = eps_from_x0(x_t, x0, torch.tensor(abar, dtype=x_t.dtype))
    return q_sample(x0, eps, torch.tensor(abar_next, dtype=x_t.dtype))


def heun_step(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    abar: float,
    abar_next: float,
    denoise_next: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Heun (2nd order) step of the probability-flow ODE in sigma = sqrt((1 - abar) / abar), x~ = x / sqrt(abar),
    where dx~/dsigma = eps. The Euler half is exactly ``ddim_step``."""
    euler = ddim_step(x_t, x0, abar, abar_next)
    abar_t, abar_n = torch.tensor(abar, dtype=x_t.dtype), torch.tensor(abar_next, dtype=x_t.dtype)
    eps1 = eps_from_x0(x_t, x0, abar_t)
    eps2 = eps_from_x0(euler, denoise_next(euler), abar_n)
    sigma, sigma_next = math.sqrt((1 - abar) / abar), math.sqrt((1 - abar_next) / abar_next)
    return math.sqrt(abar_next) * (x_t / math.sqrt(abar) + (sigma_next - sigma) * 0.5 * (eps1 + eps2))


def evaluations(config: SamplerConfig) -> int:
    """Network passes over the whole volume: one per sparse step, two per transition with Heun."""
    return 2 * config.steps - 1 if config.heun else config.steps


def window_slices(shape: tuple[int, ...], patch: tuple[int, ...], overlap: float) -> list[tuple[slice, ...]]:
    """The windows of one whole-volume pass, by the same scan rule as ``sliding_window_inference``."""
    image = [max(s, p) for s, p in zip(shape, patch, strict=True)]
    interval = [p if s == p else max(int(p * (1 - overlap)), 1) for s, p in zip(image, patch, strict=True)]
    return dense_patch_slices(image, patch, interval)


def count_windows(shape: tuple[int, ...], patch: tuple[int, ...], overlap: float) -> int:
    """Windows per whole-volume pass."""
    return len(window_slices(shape, patch, overlap))


def covering_slab(depth: int, first: int, stop: int, patch_z: int, overlap: float) -> tuple[int, int]:
    """Slices [start, stop) of the volume (``depth`` slices) covered by the z-windows of a whole-volume pass that
    hold any of slices ``first`` to ``stop - 1``. Sampled alone, such a slab has the whole run's window grid and
    blending, so a single pass (K = 1) gives those slices exactly as the whole run does; with more passes the
    windows outside the slab also shaped the earlier steps near its ends."""
    rows = [w[0] for w in window_slices((max(depth, patch_z),), (patch_z,), overlap)]
    covering = [r for r in rows if r.start < stop and first < r.stop]
    return int(covering[0].start), min(int(covering[-1].stop), depth)


def foreground(y: torch.Tensor, background: float | None) -> torch.Tensor:
    """Which windows of a batch of degraded patches (B, 1, z, y, x) the network runs on: those reaching
    ``background`` somewhere (every one when None); the others keep their degraded input."""
    if background is None:
        return torch.ones(len(y), dtype=torch.bool)
    return (y.flatten(1).amax(dim=1) >= background).cpu()


def sampling_input(y: np.ndarray, patch: tuple[int, int, int], slab: tuple[int, int] | None = None) -> torch.Tensor:
    """What ``sample`` runs on: ``y`` as (1, 1, z, y, x), padded to at least one patch, cut to ``slab`` (a slab
    that ends with the volume keeps the padding)."""
    pad = [max(p - s, 0) for s, p in zip(y.shape, patch, strict=True)]
    y_t = _pad_replicate(torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))[None, None], pad)
    return y_t[:, :, _padded(slab, y.shape[0], y_t.shape[2])]


def _padded(slab: tuple[int, int] | None, depth: int, padded_depth: int) -> slice:
    start, stop = slab or (0, depth)
    return slice(start, padded_depth if stop >= depth else stop)


def foreground_windows(y_t: torch.Tensor, config: SamplerConfig) -> list[tuple[slice, ...]]:
    """The windows of one pass over ``sampling_input``'s tensor that the network runs on, as index tuples."""
    every = (slice(None), slice(None))
    windows = [(*every, *w) for w in window_slices(tuple(y_t.shape[2:]), config.patch_size, config.overlap)]
    return [w for w in windows if foreground(y_t[w], config.background)]


def seconds_per_window(
    model: SparseDiffusionUNet,
    y_t: torch.Tensor,
    windows: list[tuple[slice, ...]],
    spacing_zyx: tuple[float, float, float],
    config: SamplerConfig,
    device: torch.device,
    t: int,
) -> tuple[float, float]:
    """(network call, content encoding) seconds per window, timed on the first batch of ``windows`` as the
    sampler runs them, after a warm-up call (which the run then no longer needs)."""
    batch = windows[: config.sw_batch_size]
    denoiser = PatchDenoiser(prepare_model(model, config, device), y_t, spacing_zyx, config, device)
    denoiser.t = t
    y = torch.cat([y_t[w] for w in batch]).to(device)
    with torch.inference_mode():
        denoiser._run_model(y, y, batch)  # warm-up, and the content codes are then cached
        forward = _timed(lambda: denoiser._run_model(y, y, batch), device)
        with network_context(config, device):
            content = _timed(lambda: denoiser.model.encode_content(y), device)
    return forward / len(batch), content / len(batch)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


class PatchDenoiser:
    """x0 estimate over a whole volume at one timestep, evaluated patch by patch."""

    def __init__(
        self,
        model: SparseDiffusionUNet | OpenVINONetwork,
        y: torch.Tensor,
        spacing_zyx: tuple[float, float, float],
        config: SamplerConfig,
        device: torch.device,
        on_windows: Callable[[int], None] = lambda n: None,
    ):
        self.model, self.y, self.config, self.device = model, y, config, device
        self.spacing = torch.tensor([spacing_zyx], dtype=torch.float32, device=device)
        self.on_windows = on_windows
        self.content_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self.t = 0

    def __call__(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        self.t = t
        return sliding_window_inference(
            x_t,
            roi_size=self.config.patch_size,
            sw_batch_size=self.config.sw_batch_size,
            predictor=self._predict_windows,
            overlap=self.config.overlap,
            mode="gaussian",
            padding_mode="replicate",
            sw_device=self.device,
            device=torch.device("cpu"),
            with_coord=True,
            condition=self.y,
        )

    def _predict_windows(self, x_t: torch.Tensor, slices: list, condition: torch.Tensor) -> torch.Tensor:
        self.on_windows(len(slices))
        y = condition
        keep = foreground(y, self.config.background)
        out = y.clone()
        if keep.any():
            idx = keep.nonzero().flatten().tolist()
            out[idx] = self._run_model(x_t[idx], y[idx], [slices[i] for i in idx]).to(out.dtype)
        return out

    def _run_model(self, x_t: torch.Tensor, y: torch.Tensor, slices: list) -> torch.Tensor:
        n = x_t.shape[0]
        t = torch.full((n,), self.t, dtype=torch.long, device=self.device)
        with network_context(self.config, self.device):
            content = self._content(y, slices)
            x0 = self.model(x_t, y, t, self.spacing.expand(n, 3), content)
        return x0.float()

    def _content(self, y: torch.Tensor, slices: list) -> torch.Tensor | None:
        if self.model.content_encoder is None:
            return None
        keys = [tuple(s.start or 0 for s in sl[2:]) for sl in slices]
        missing = [i for i, k in enumerate(keys) if k not in self.content_cache]
        if missing:
            codes = self.model.encode_content(y[missing])
            for i, code in zip(missing, codes, strict=True):
                self.content_cache[keys[i]] = code
        return torch.stack([self.content_cache[k] for k in keys])


def uses_channels_last(config: SamplerConfig, device: torch.device) -> bool:
    """Channels-last 3D pays off with bf16 autocast on CPU (oneDNN, with AMX or AVX512-BF16: README, Performance);
    it was neutral in float32 and is unmeasured on CUDA, so elsewhere it is used only when asked for."""
    if config.channels_last is not None:
        return config.channels_last
    return device.type == "cpu" and config.precision == "bf16"


def prepare_model(
    model: SparseDiffusionUNet, config: SamplerConfig, device: torch.device
) -> SparseDiffusionUNet | OpenVINONetwork:
    """The network as the sampler runs it: in eval mode and, where it is faster, a channels-last copy or an
    OpenVINO graph (the caller's model is never converted, so a trainer can sample with its live model)."""
    model = model.eval()
    if config.backend == "openvino":
        return OpenVINONetwork(model)
    if uses_channels_last(config, device):
        model = copy.deepcopy(model).to(memory_format=torch.channels_last_3d)
    return model


def network_context(config: SamplerConfig, device: torch.device):
    """Autocast for the network call only (the update rules and the stitching stay float32)."""
    if config.precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[config.precision]
    return torch.autocast(device.type, dtype=dtype)


def sample(
    model: SparseDiffusionUNet,
    schedule: NoiseSchedule,
    y: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    config: SamplerConfig,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    slab: tuple[int, int] | None = None,
) -> np.ndarray:
    """Enhance a whole normalised volume ``y`` (z, y, x) with K sparse DDIM (or Heun) steps; returns x0.

    With ``slab`` (from ``covering_slab``) only those slices are sampled, with the whole run's noise there, and
    x0 is returned for the slab's slices inside the volume."""
    device = torch.device(device)
    shape = y.shape
    y_t = sampling_input(y, config.patch_size)
    generator = torch.Generator().manual_seed(config.seed)
    # the whole volume's noise is drawn once, so a run is reproducible and independent of the patch layout
    noise = torch.randn(y_t.shape, generator=generator)
    region = _padded(slab, shape[0], y_t.shape[2])
    y_t, noise = y_t[:, :, region], noise[:, :, region]
    total = evaluations(config) * count_windows(tuple(y_t.shape[2:]), config.patch_size, config.overlap)
    done = 0

    def on_windows(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    denoiser = PatchDenoiser(prepare_model(model, config, device), y_t, spacing_zyx, config, device, on_windows)
    abar = schedule.alphas_cumprod
    timesteps = schedule.sparse_timesteps(config.steps)
    t_start = max(timesteps)
    x = q_sample(y_t, noise, abar[t_start].float())
    with torch.inference_mode():
        for t, t_next in sampling_pairs(timesteps):
            x0 = denoiser(x, t)
            if config.heun:
                x = heun_step(x, x0, float(abar[t]), float(abar[t_next]), lambda xn, tn=t_next: denoiser(xn, tn))
            else:
                x = ddim_step(x, x0, float(abar[t]), float(abar[t_next]))
        x0 = denoiser(x, min(t for t in timesteps if t > 0))
    z, h, w = shape
    return x0[0, 0, : z - region.start, :h, :w].numpy()


def _pad_replicate(volume: torch.Tensor, pad: list[int]) -> torch.Tensor:
    """Pad (z, y, x) at the far end so every side is at least one patch; cropped back after sampling."""
    if not any(pad):
        return volume
    return torch.nn.functional.pad(volume, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
