"""Where the network runs: PyTorch, or OpenVINO on CPUs without native bf16 arithmetic.

On such CPUs (AVX2 laptops and servers) PyTorch spends about a third of a float32 pass outside the convolutions
(GroupNorm, SiLU, layout copies); OpenVINO fuses those and ran the same network 1.47x faster at the same
result (largest difference 2e-6; README, Performance). It is optional (``pip install 'sdenhance[openvino]'``):
``auto`` uses it where it was measured faster and falls back to PyTorch where it is not installed.

Converting a network takes seconds, so the converted graph is kept on disk (OpenVINO IR), keyed by the
weights, and compiled once per process.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import VolumeError
from .model import SparseDiffusionUNet

BACKENDS = ("auto", "torch", "openvino")
#: Where converted networks are kept; SDENHANCE_CACHE_DIR overrides it.
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sdenhance"


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def pick_backend(name: str, device: torch.device, precision: str) -> str:
    """``auto`` is OpenVINO for float32 on the CPU when it is installed (where it was measured faster; bf16 CPUs
    run PyTorch's bf16 path, which is faster still), else PyTorch; an explicit choice is checked."""
    if name not in BACKENDS:
        raise VolumeError(f"--backend {name}: use one of {', '.join(BACKENDS)}")
    openvino_fits = device.type == "cpu" and precision == "fp32"
    if name == "auto":
        return "openvino" if openvino_fits and openvino_installed() else "torch"
    if name == "openvino" and not openvino_fits:
        raise VolumeError("--backend openvino runs float32 on the CPU only; use --device cpu --precision fp32")
    if name == "openvino" and not openvino_installed():
        raise VolumeError("--backend openvino needs the openvino package: pip install 'sdenhance[openvino]'")
    return name


class OpenVINONetwork:
    """The sampler's view of a SparseDiffusionUNet, run by OpenVINO: the same call, float32 tensors in and out.

    The STM content code is computed inside each call (0.4 % of a pass), so ``content_encoder`` is None and the
    sampler does not cache codes for it."""

    content_encoder = None

    def __init__(self, model: SparseDiffusionUNet):
        self.compiled = _compiled(str(converted_graph(model)), torch.get_num_threads())

    def encode_content(self, y: torch.Tensor) -> None:
        return None

    def __call__(self, x_t, y, t, spacing=None, content=None) -> torch.Tensor:
        # the graph's inputs are forward's first four arguments, in order (the conversion keeps unused ones)
        result = self.compiled([tensor.detach().cpu().numpy() for tensor in (x_t, y, t, spacing)])
        return torch.from_numpy(np.asarray(result[0]))


def weights_key(model: SparseDiffusionUNet) -> str:
    """A digest of the architecture, the weights and the OpenVINO version: a changed model is converted anew."""
    import openvino

    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    digest.update(openvino.__version__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def converted_graph(model: SparseDiffusionUNet, cache_dir: Path | None = None) -> Path:
    """The model as OpenVINO IR (``.xml`` + ``.bin``), converted on first use and kept for later runs."""
    import openvino as ov

    cache_dir = Path(os.environ.get("SDENHANCE_CACHE_DIR", cache_dir or CACHE_DIR)) / "openvino"
    xml = cache_dir / f"{weights_key(model)}.xml"
    if xml.is_file():
        return xml
    cache_dir.mkdir(parents=True, exist_ok=True)
    example = _example_inputs(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on constant shapes concern no user
        graph = ov.convert_model(model, example_input=example)
    # write under a temporary name and rename: a run that is killed half-way leaves no half-written graph
    partial = xml.with_name(f"{xml.stem}.{os.getpid()}.partial.xml")
    ov.save_model(graph, str(partial), compress_to_fp16=False)
    os.replace(partial.with_suffix(".bin"), xml.with_suffix(".bin"))
    os.replace(partial, xml)
    return xml


def _example_inputs(model: SparseDiffusionUNet) -> tuple[torch.Tensor, ...]:
    side = 2 * model.config.size_multiple  # a small volume the network takes; the graph keeps sizes free
    volume = torch.zeros(2, 1, side, side, side)
    return volume, volume, torch.ones(2, dtype=torch.long), torch.ones(2, 3)


@functools.lru_cache(maxsize=4)
def _compiled(xml: str, threads: int):
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    return ov.Core().compile_model(xml, "CPU", config)
