"""What one enhancement run asks of the engine, and how that becomes a worker command line."""

from __future__ import annotations

import enum
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from sdenhance.registry import MAX_SAMPLES, SR_FACTORS


class Task(enum.Enum):
    DENOISE = "denoise"
    SR = "sr"

    def label(self) -> str:
        """Text shown in the panel (parameterNodeWrapper's combo box connector calls this)."""
        return {"denoise": "Denoise", "sr": "Super-resolution"}[self.value]


class Axis(enum.Enum):
    Z = "z"
    Y = "y"
    X = "x"

    def label(self) -> str:
        return {"z": "z (slice axis)", "y": "y", "x": "x"}[self.value]


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"

    def label(self) -> str:
        return {"auto": "Auto (GPU if available)", "cpu": "CPU", "cuda": "GPU (CUDA)"}[self.value]


def parseGpuList(text: str) -> list[str]:
    """GPU names, position = index, from ``nvidia-smi --query-gpu=index,name --format=csv,noheader``."""
    return [line.split(",", 1)[1].strip() for line in text.splitlines() if "," in line]


def listGpus() -> list[str]:
    """The NVIDIA GPUs, in the order the worker numbers them (PCI bus); [] where nvidia-smi is missing or fails.

    Asks nvidia-smi rather than torch, which must never load into Slicer's process.
    """
    nvidiaSmi = shutil.which("nvidia-smi")
    if nvidiaSmi is None:
        return []
    try:
        output = subprocess.run(
            [nvidiaSmi, "--query-gpu=index,name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # no console window flashing on Windows
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parseGpuList(output)


#: File name endings the engine can write.
OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def splitSuffix(name: str) -> tuple[str, str]:
    """(stem, suffix) with the engine's double suffix .nii.gz kept whole; suffix "" for other names."""
    suffix = next((s for s in OUTPUT_SUFFIXES if name.endswith(s)), "")
    return (name[: -len(suffix)] if suffix else Path(name).stem), suffix


def uncertaintyPath(outputPath: Path) -> Path:
    """Where the worker writes the samples' spread: beside the result, named after it."""
    stem, suffix = splitSuffix(Path(outputPath).name)
    return Path(outputPath).with_name(f"{stem}_uncertainty{suffix or '.nrrd'}")


@dataclass(frozen=True)
class EnhanceSettings:
    """Engine options of one run; strings are accepted where an enum is expected (batch use).

    Zero for ``factor``, ``steps`` or ``patch`` and an empty ``checkpoint`` mean "the checkpoint's own default"
    (without a checkpoint the engine picks its default model for the task, and for SR the factor).
    """

    task: Task = Task.DENOISE
    checkpoint: str = ""
    factor: int = 0
    axis: Axis = Axis.Z
    steps: int = 0
    patch: int = 0
    overlap: float = 0.25
    seed: int = 0
    device: Device = Device.AUTO
    gpu: int = 0  # which GPU (nvidia-smi's index) when device is GPU
    samples: int = 1  # > 1: the result is their mean and their spread comes back as an uncertainty volume
    preview: int | None = None  # enhance only the patches around this input slice along previewAxis

    def __post_init__(self):
        # frozen dataclass: coercion must go through object.__setattr__
        object.__setattr__(self, "task", Task(self.task))
        object.__setattr__(self, "axis", Axis(self.axis))
        object.__setattr__(self, "device", Device(self.device))
        object.__setattr__(self, "checkpoint", str(self.checkpoint or ""))
        if self.factor not in (0, *SR_FACTORS):
            raise ValueError(f"factor {self.factor}: super-resolution supports x2 and x4 (0: the model's own)")
        if self.steps < 0 or self.patch < 0 or self.seed < 0 or self.gpu < 0:
            raise ValueError("steps, patch, seed and gpu must not be negative")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap {self.overlap} must be in [0, 1)")
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise ValueError(f"samples {self.samples} must be between 1 and {MAX_SAMPLES}")
        if self.preview is not None and self.preview < 0:
            raise ValueError(f"preview slice {self.preview} must not be negative")

    @property
    def withUncertainty(self) -> bool:
        return self.samples > 1

    @property
    def previewAxis(self) -> Axis:
        """The axis a preview's slice is counted along: the model's through-plane axis (the SR axis, else z)."""
        return self.axis if self.task == Task.SR else Axis.Z

    def workerArguments(self, inputPath: Path, outputPath: Path) -> list[str]:
        """Arguments after the Python executable for ``python -m sdenhance enhance``."""
        args = ["-m", "sdenhance", "enhance", str(inputPath), "-o", str(outputPath)]
        args += ["--task", self.task.value, "--seed", str(self.seed), "--device", self.device.value]
        args += ["--overlap", str(self.overlap), "--overwrite", "--progress", "jsonl"]
        if self.checkpoint:
            args += ["--checkpoint", self.checkpoint]
        if self.task == Task.SR:
            args += ["--axis", self.axis.value] + (["--factor", str(self.factor)] if self.factor else [])
        if self.steps:
            args += ["--steps", str(self.steps)]
        if self.patch:
            args += ["--patch", str(self.patch)]
        if self.withUncertainty:
            args += ["--samples", str(self.samples), "--uncertainty", str(uncertaintyPath(outputPath))]
        if self.preview is not None:
            args += ["--preview", str(self.preview)]
        return args

    def checkpointProblem(self) -> str:
        """Why ``checkpoint`` cannot do this task (or SR factor), or "" if it can; reads only its JSON card."""
        if not self.checkpoint:
            return ""
        from sdenhance import registry

        try:
            registry.check_fits(registry.resolve(self.checkpoint), self.task.value, self.factor)
        except registry.CheckpointError as exc:
            return str(exc)
        return ""

    def asRun(self, finished: dict) -> EnhanceSettings:
        """These settings with the SR factor and axis the engine reports having used (its ``done`` event)."""
        if self.task != Task.SR:
            return self
        return replace(self, factor=finished.get("factor", self.factor), axis=finished.get("axis", self.axis))

    def workerEnvironment(self) -> dict[str, str]:
        """Variables to add to the worker's environment."""
        if self.device == Device.CPU:
            # a CPU run must not even initialise CUDA: that costs seconds and GPU memory other apps may need
            return {"CUDA_VISIBLE_DEVICES": "-1"}
        if self.device == Device.GPU:
            # the worker then sees only the chosen GPU, numbered as nvidia-smi (and listGpus) number them
            return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(self.gpu)}
        return {}

    def describe(self) -> str:
        """Short label for node names: "denoise" or "super-resolution x2 z"."""
        if self.task == Task.SR:
            return f"super-resolution x{self.factor} {self.axis.value}" if self.factor else "super-resolution"
        return "denoise"
