"""Tiny checkpoints for tests and self-tests: random weights, real architecture, real file format."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import torch

from .checkpoint import build_meta, save_checkpoint
from .model import ModelConfig, SparseDiffusionUNet
from .schedule import ScheduleConfig

TINY_MODEL = ModelConfig(channels=(8, 16), time_dim=16, stm_dim=8, groups=4)


def make_tiny_checkpoint(
    folder: str | Path,
    task: str = "denoise",
    modality: str = "ct",
    sr_factor: int = 2,
    sr_axis: str = "z",
    seed: int = 0,
    perturb: float = 0.01,
    name: str | None = None,
) -> Path:
    """Write ``<name>.safetensors`` + JSON (default name ``tiny-<task>-<modality>``) with a 16^3 patch and K = 2.

    The zero-initialised output layer is perturbed (``perturb``) so the network does change its input,
    which lets tests see that the model was really run.
    """
    torch.manual_seed(seed)
    model = SparseDiffusionUNet(TINY_MODEL)
    with torch.no_grad():
        for p in model.head[-1].parameters():
            p.normal_(0.0, perturb)
    name = name or f"tiny-{task}-{modality}"
    meta = build_meta(
        name=name,
        task=task,
        modality=modality,
        model=TINY_MODEL,
        schedule=ScheduleConfig(steps=2),
        patch_size=(16, 16, 16),
        sr_factor=sr_factor if task == "sr" else None,
        sr_axis=sr_axis if task == "sr" else None,
        background=-0.9 if modality == "ct" else None,
        card={"summary": "random weights, for tests only"},
    )
    return save_checkpoint(model, meta, Path(folder) / f"{name}.safetensors")


@contextlib.contextmanager
def serve_in_thread(*argv: str):
    """A real ``sdenhance serve`` (``argv``: its options) on a free loopback port in a thread; yields its URL."""
    from .cli import build_parser, enhance_in_process, parse_enhance
    from .server import prepare

    prepared = prepare(build_parser().parse_args(["serve", "--port", "0", *argv]), parse_enhance, enhance_in_process)
    thread = threading.Thread(target=prepared.server.run, kwargs={"sockets": [prepared.sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not prepared.server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield prepared.url
    finally:
        prepared.server.should_exit = True
        thread.join(timeout=60)
