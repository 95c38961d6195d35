"""``sdenhance`` command line: enhance, models, train, evaluate, demo, serve, batch.

Exit codes: 0 success, 1 unexpected error, 2 bad input or usage, 3 checkpoint problem, 4 out of memory, 5 a
processing server refused or was lost (``enhance --server``).
With ``--progress jsonl`` every line on stdout is one JSON object (start, step..., done | error), which is
what the Slicer module's worker runner reads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from . import __version__
from .batch import add_batch_parser
from .demo import add_demo_parser
from .dicom import check_dicom_output, write_dicom_series
from .errors import EXIT_INTERNAL, InputError, Terminated, VolumeError, classify, require
from .evaluate import add_evaluate_parser
from .io import output_suffix, read_volume, validate_intensities, write_volume
from .registry import (
    MAX_SAMPLES,
    MODALITIES,
    SR_FACTORS,
    default_for,
    list_shipped,
    resolve,
    spacing_outside_range,
)


class Reporter:
    """Progress and errors for humans (tqdm bar, stderr) or for programs (JSON lines on stdout)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.bar = None
        self.started = time.monotonic()
        self.evaluations = 1
        self.last_step = 0
        self.warnings: list[str] = []  # repeated in the done event, so a program that reads only it sees them

    def emit(self, event: str, **fields) -> None:
        if self.mode == "jsonl":
            print(json.dumps({"event": event, **fields}), flush=True)

    def start(self, **fields) -> None:
        self.evaluations = fields["evaluations"]
        self.started = time.monotonic()
        self.emit("start", **fields)
        if self.mode == "bar":
            from tqdm import tqdm

            noise = f", input {fields['noise']}" if fields.get("noise") else ""
            estimate = f"; estimated {fields['estimate_s']:.0f} s" if "estimate_s" in fields else ""  # old servers
            network = f" ({fields['backend']}, {fields['precision']})" if "backend" in fields else ""
            print(
                f"device {fields['device']}{network}, {fields['input_shape']} -> {fields['output_shape']}, "
                f"{self.evaluations} network passes{noise}{estimate}",
                file=sys.stderr,
            )
            self.bar = tqdm(total=1, unit="patch", desc="enhancing", dynamic_ncols=True)

    def windows(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.n = done
            self.bar.refresh()
        step = done * self.evaluations // total
        if step > self.last_step:
            self.last_step = step
            elapsed = time.monotonic() - self.started
            eta = elapsed * (total - done) / max(done, 1)
            self.emit("step", step=step, total=self.evaluations, elapsed_s=round(elapsed, 2), eta_s=round(eta, 2))

    def done(self, **fields) -> None:
        if self.bar is not None:
            self.bar.close()
        self.emit("done", seconds=round(time.monotonic() - self.started, 2), warnings=self.warnings, **fields)
        if self.mode == "bar":
            print(f"wrote {fields['output']}", file=sys.stderr)

    def error(self, kind: str, message: str) -> None:
        if self.bar is not None:
            self.bar.close()
        self.emit("error", kind=kind, message=message)
        print(f"error: {message}", file=sys.stderr)

    def warning(self, message: str) -> None:
        self.warnings.append(message)
        self.emit("warning", message=message)
        print(f"warning: {message}", file=sys.stderr)


def _patch(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("patch is P or Z,Y,X (e.g. 16,64,64)")
    return tuple(parts)


def _slice_index(text: str) -> int | str:
    if text == "middle":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a slice index (0, 1, 2, ...) or 'middle'")
    return int(text)


def add_enhance_parser(sub) -> None:
    p = sub.add_parser("enhance", help="denoise or super-resolve a 3D scan")
    p.add_argument("input", help="NIfTI / NRRD / MHA file or DICOM series folder")
    p.add_argument("-o", "--output", required=True, help="output file (.nii.gz, .nii, .nrrd, .mha), or folder")
    p.add_argument("--task", choices=["denoise", "sr"], default="denoise")
    p.add_argument("--checkpoint", help="shipped model name (see `sdenhance models`) or .safetensors path")
    p.add_argument(
        "--factor", type=int, choices=SR_FACTORS, help="SR factor (default: the checkpoint's; else the smallest)"
    )
    p.add_argument("--axis", choices=["x", "y", "z"], help="SR through-plane axis (default: the checkpoint's)")
    p.add_argument("--modality", choices=MODALITIES, help="default: the checkpoint's")
    p.add_argument("--steps", type=int, help="sparse steps K (default: the checkpoint's)")
    p.add_argument("--heun", action="store_true", help="2nd-order Heun correction (about 2x the time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--samples",
        type=int,
        default=1,
        help=f"average this many samples (1-{MAX_SAMPLES}, each with its own seed and flip; N times the time)",
    )
    p.add_argument(
        "--uncertainty", help="also write the samples' per-voxel standard deviation here (needs --samples >= 2)"
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--patch", type=_patch, help="patch size P or Z,Y,X (default: the training patch)")
    p.add_argument("--overlap", type=float, default=0.25, help="patch overlap fraction (default 0.25)")
    p.add_argument("--batch", type=int, help="patches per network call (default 4 on CPU, 16 on GPU)")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="auto: bf16 on CPUs with AMX or AVX512-BF16 (faster, same quality; see README), else fp32",
    )
    p.add_argument(
        "--backend",
        choices=["auto", "torch", "openvino"],
        default="auto",
        help="auto: OpenVINO for float32 on the CPU when installed (faster; see README), else PyTorch",
    )
    p.add_argument("--no-skip-background", action="store_true", help="run the model on air patches too")
    p.add_argument(
        "--preview",
        nargs="?",
        const="middle",
        type=_slice_index,
        metavar="SLICE",
        help="enhance only the patches around this input slice along the model's through-plane axis (no value: "
        "the middle one) and write that slab, placed where it lies in the input",
    )
    p.add_argument("--progress", choices=["bar", "jsonl", "none"], default="bar")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument(
        "--format",
        choices=["dicom"],
        help="dicom: write a derived DICOM series into the folder -o (the input must be a DICOM series folder)",
    )
    p.add_argument("--server", metavar="URL", help="run on this processing server (`sdenhance serve`), not here")
    p.add_argument("--token", help="the server's token (default: $SDENHANCE_TOKEN)")
    p.set_defaults(func=run_enhance)


def check_outputs(args) -> list[Path]:
    """The output paths, refused before any work if they are unusable or would replace something."""
    outputs = [Path(args.output)] + ([Path(args.uncertainty)] if args.uncertainty else [])
    for output in outputs:
        if output.resolve() == Path(args.input).resolve():
            raise VolumeError("the output would overwrite the input; choose another output path")
    if args.format == "dicom":
        require("dicom")
        check_dicom_output(Path(args.input), outputs[0])
    for output in outputs[1:] if args.format == "dicom" else outputs:
        output_suffix(output)
        if output.exists() and not args.overwrite:
            raise FileExistsError(f"{output} exists; choose another output or pass --overwrite")
    if args.preview is not None and args.format == "dicom":
        raise VolumeError("--preview writes a slab of the volume, not a DICOM series; leave out --format dicom")
    if args.uncertainty and args.samples < 2:
        raise VolumeError(f"--uncertainty needs the spread of several samples: add --samples 4 (or 2-{MAX_SAMPLES})")
    if len(set(o.resolve() for o in outputs)) < len(outputs):
        raise VolumeError("--output and --uncertainty name the same file; give them different names")
    return outputs


def run_enhance(args) -> int:
    reporter = args.reporter
    outputs = check_outputs(args)
    if args.server:
        return run_on_server(args, outputs)
    volume = read_volume(args.input)
    validate_intensities(volume.array)
    card = resolve(args.checkpoint) if args.checkpoint else default_for(args.task, args.modality, args.factor)
    if args.modality is None:
        check_looks_like(volume, card.modality)
    # torch loads only now, so a bad input or checkpoint fails at once
    from .pipeline import Enhancement, EnhanceOptions, untrained_timesteps_warning

    options = EnhanceOptions(
        task=args.task,
        factor=args.factor,
        axis=args.axis,
        modality=args.modality,
        steps=args.steps,
        heun=args.heun,
        seed=args.seed,
        samples=args.samples,
        device=args.device,
        patch=args.patch,
        overlap=args.overlap,
        sw_batch_size=args.batch,
        precision=args.precision,
        backend=args.backend,
        skip_background=not args.no_skip_background,
        preview=args.preview,
    )
    enhancement = Enhancement(volume, card, options)
    plan = enhancement.plan
    if warning := spacing_outside_range(card, model_spacing(volume, plan, card)):
        reporter.warning(warning)
    if warning := untrained_timesteps_warning(card, plan.sampler.steps):
        reporter.warning(warning)
    preview = None
    if args.preview is not None:  # the output's slices along that axis, so that a caller can place the slab
        preview = {"axis": plan.slab_axis_name, "start": plan.slab[0], "stop": plan.slab[1]}
    noise = None
    if card.task == "denoise":  # a model for noise only knows the noise levels it was trained on
        from .noise import estimate_noise, noise_outside_range

        noise = estimate_noise(volume.array, card.modality)
        if warning := noise_outside_range(card.meta, noise, card.name):
            reporter.warning(warning)
    reporter.start(
        device=str(plan.device),
        backend=plan.sampler.backend,
        precision=plan.sampler.precision,
        input_shape=list(volume.array.shape),
        output_shape=list(plan.output_shape),
        evaluations=plan.evaluations,
        checkpoint=card.name,
        engine_version=__version__,
        noise=None if noise is None else str(noise),
        preview=preview,
        **_estimate(enhancement),
    )
    result = enhancement.run(reporter.windows)
    if args.format == "dicom":
        how = f"sdenhance {__version__} {args.task} with {card.name}: K={plan.sampler.steps}, seed={args.seed}"
        write_dicom_series(result.volume, Path(args.input), outputs[0], card.name, f"{how}, samples={args.samples}")
    else:
        write_volume(result.volume, outputs[0], overwrite=args.overwrite)
    if args.uncertainty:
        write_volume(result.spread, outputs[1], overwrite=args.overwrite)
    reporter.done(
        output=str(outputs[0]),
        uncertainty=args.uncertainty,
        factor=plan.factor,
        axis=plan.axis,
        samples=args.samples,
        checkpoint=card.name,
        steps=plan.sampler.steps,
        seed=args.seed,
        device=str(plan.device),
        engine_version=__version__,
        preview=preview,
    )
    return 0


def _estimate(enhancement) -> dict[str, float]:
    """The run's estimated seconds, and what the estimate itself took (timing a few network calls)."""
    started = time.monotonic()
    estimate = enhancement.estimate_seconds()
    # significant digits: a small run on a fast machine takes under 0.05 s and would read as 0
    return {"estimate_s": float(f"{estimate:.3g}"), "calibration_s": round(time.monotonic() - started, 2)}


def model_spacing(volume, plan, card) -> dict[str, float]:
    """Voxel size (mm) per axis as the model sees it: for SR the finer grid's, with the up-sampled axis moved to
    the one the model was trained on."""
    spacing = dict(zip("xyz", volume.spacing, strict=True))
    if plan.factor:
        spacing[plan.axis] /= plan.factor
        trained = card.meta["sr_axis"]
        spacing[plan.axis], spacing[trained] = spacing[trained], spacing[plan.axis]
    return spacing


#: Every CT field of view holds air or fat; MRI and PET intensities are never this low.
CT_LOWEST_HU = -200.0


def check_looks_like(volume, modality: str) -> None:
    """Refuse a scan that cannot be CT for a CT model when the user did not say the modality (the default model
    for a task is the CT one, so an MRI run without --modality would otherwise go through CT scaling)."""
    if modality == "ct" and float(volume.array.min()) > CT_LOWEST_HU:
        raise VolumeError(
            f"the input has no voxel below {CT_LOWEST_HU:g}, so it does not look like CT in Hounsfield units; "
            "pass --modality mri or pet (or a matching --checkpoint), or --modality ct if it is CT"
        )


def add_models_parser(sub) -> None:
    p = sub.add_parser("models", help="list the shipped models")
    p.add_argument("--task", choices=["denoise", "sr"])
    p.add_argument("--json", action="store_true", help="print the cards as JSON")
    p.set_defaults(func=run_models)


def run_models(args) -> int:
    cards = list_shipped(args.task)
    if args.json:
        print(json.dumps([c.meta | {"path": str(c.path)} for c in cards], indent=2))
    elif not cards:
        print("no shipped models yet; train one with `sdenhance train --config CONFIG.yaml`")
    for c in cards if not args.json else []:
        print(c.describe())
    return 0


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config (torchrun for several processes)")
    p.add_argument("--config", required=True, help="YAML training config (see scripts/configs/)")
    p.add_argument("--output", help="run folder (default: runs/NAME)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's state.pt")
    p.add_argument("--max-steps", type=int, help="stop at this optimiser step (default: the config's)")
    p.add_argument("--time-budget", type=float, help="stop after this many minutes (state is saved)")
    p.add_argument("--schedule", choices=["sparse", "dense"], default="sparse", help="timesteps drawn in training")
    p.add_argument(
        "--init-from",
        help="start a new run from these weights (shipped name or .safetensors), e.g. to continue training",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    import torch

    from .config import TrainConfig
    from .train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = TrainConfig.load(args.config)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"cannot use config {args.config}: {exc}") from exc
    if args.init_from:
        config.init_from = args.init_from
    output = Path(args.output or Path("runs") / config.name)
    summary = train(
        config,
        output,
        resume=args.resume,
        max_steps=args.max_steps,
        time_budget_s=args.time_budget * 60 if args.time_budget else None,
        dense=args.schedule == "dense",
        progress=not args.no_progress,
    )
    print(json.dumps(summary, indent=2))
    return 0


def run_on_server(args, outputs: list[Path]) -> int:
    """``enhance`` on a processing server: the same options, progress events, result and provenance."""
    from .client import Client, options_of

    if args.format == "dicom":
        raise InputError("--format dicom needs the DICOM input on this computer; leave out --server")
    token = args.token or os.environ.get("SDENHANCE_TOKEN")
    if not token:
        raise InputError("--server needs the server's token: pass --token or set SDENHANCE_TOKEN")
    with _uploadable(Path(args.input)) as upload:
        done = Client(args.server, token).run(
            upload, outputs, options_of(args), on_status=lambda status: _replay(args.reporter, status["events"])
        )
    provenance = {k: v for k, v in done.items() if k not in ("seconds", "warnings")}  # done() adds its own
    args.reporter.done(**provenance, output=str(outputs[0]), uncertainty=args.uncertainty)
    return 0


@contextlib.contextmanager
def _uploadable(path: Path):
    """``path`` if a server takes it as it is; else (a DICOM folder, an .mhd) a temporary NRRD copy of it."""
    from .client import format_of

    if format_of(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sdenhance-upload-") as folder:
        yield write_volume(read_volume(path), Path(folder) / "input.nrrd")


def _replay(reporter: Reporter, events: list[dict]) -> None:
    """A server's progress events, reported here as a local run reports its own."""
    for event in events:
        fields = {k: v for k, v in event.items() if k != "event"}
        if event["event"] == "start":
            reporter.start(**fields)
        elif event["event"] == "step":
            reporter.windows(fields["step"], fields["total"])  # steps stand in for windows: same fraction
        elif event["event"] == "warning":
            reporter.warning(fields["message"])


class _RaisingParser(argparse.ArgumentParser):
    """Raises InputError instead of exiting, for arguments that come from a server request or a batch list."""

    def error(self, message):
        raise InputError(f"invalid enhance option: {message}")


def parse_enhance(argv: list[str]) -> argparse.Namespace:
    """``enhance`` arguments (input first) parsed exactly as on the command line."""
    parser = _RaisingParser(prog="sdenhance")
    add_enhance_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["enhance", *argv])


class _ListeningReporter(Reporter):
    """Hands every event to ``on_event``, and stops the run between batches of patches once ``should_stop()``."""

    def __init__(self, on_event, should_stop):
        super().__init__("none")
        self.on_event, self.should_stop = on_event, should_stop
        self.finished: dict = {}

    def emit(self, event: str, **fields) -> None:
        record = {"event": event, **fields}
        if event == "done":
            self.finished = record
        self.on_event(record)

    def windows(self, done: int, total: int) -> None:
        if self.should_stop():
            raise Terminated("cancelled before the run finished; no partial output is left")
        super().windows(done, total)


def enhance_in_process(argv: list[str], device: str | None, on_event, should_stop) -> dict:
    """``enhance`` with ``argv`` in this process (a server's job, one scan of a batch), on ``device`` if given
    ("cuda:1"; else the arguments' --device); errors are raised, not printed. Returns the ``done`` event."""
    args = parse_enhance(argv)
    if device:
        args.device = device
    args.reporter = _ListeningReporter(on_event, should_stop)
    run_enhance(args)
    return args.reporter.finished


def add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="a processing server: other computers (and Slicer) enhance on this one")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this computer only)")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free one; the URL is printed)")
    p.add_argument(
        "--token", help="the token clients must send (default: $SDENHANCE_TOKEN; on loopback one is made and printed)"
    )
    p.add_argument("--models", help="folder of further .safetensors checkpoints (with their .json) clients may name")
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: a worker per GPU, else one CPU worker"
    )
    p.add_argument("--max-upload-mb", type=float, default=1024.0, help="largest upload (default 1024 MB)")
    p.add_argument("--max-voxels", type=int, default=512 * 512 * 1024, help="largest volume (default 512x512x1024)")
    p.add_argument("--max-queued", type=int, default=32, help="jobs waiting at most (default 32)")
    p.add_argument("--keep-minutes", type=float, default=30.0, help="how long a result waits for its download")
    p.add_argument("--work-dir", help="where job files are kept while they last (default: the temporary folder)")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    require("server")
    from .server import prepare

    prepared = prepare(args, parse_enhance, enhance_in_process)
    print(f"sdenhance serve: listening on {prepared.url}", flush=True)
    if prepared.generated:
        print(f"token (clients pass it with --token): {prepared.token}", flush=True)
    try:
        prepared.server.run(sockets=[prepared.sock])
    except (Terminated, KeyboardInterrupt):  # uvicorn has shut down cleanly, then passed the signal on
        pass
    print("sdenhance serve: stopped; its job files are removed", flush=True)
    return 0


def run_batch(args) -> int:
    from .batch import run_sharded

    return run_sharded(args, parse_enhance, enhance_in_process)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdenhance", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"sdenhance {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_enhance_parser(sub)
    add_models_parser(sub)
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_demo_parser(sub)
    add_serve_parser(sub)
    add_batch_parser(sub, run_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; every command's errors end the same way: a message and ``errors.classify``'s exit code."""
    args = build_parser().parse_args(argv)
    args.reporter = Reporter(getattr(args, "progress", "none"))
    try:
        with _sigterm_raises():
            return args.func(args)
    except Exception as exc:
        code, kind, message = classify(exc)
        if code == EXIT_INTERNAL:  # a bug: its traceback is what a report needs
            traceback.print_exception(exc, file=sys.stderr)
        args.reporter.error(kind, message)
        return code


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises ``Terminated``, so partial outputs are removed on the way out (default: die on the spot)."""

    def terminate(signum, frame):
        raise Terminated("terminated (SIGTERM) before the run finished; no partial output is left")

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
