"""Every kind of bad input a user can hand ``sdenhance enhance``, in one table: each must end with its exit code and a
message that names the problem, write no output and leave the input untouched."""

import gzip
import hashlib
import json
import shutil
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from sdenhance.cli import main
from sdenhance.errors import EXIT_CHECKPOINT, EXIT_INPUT, EXIT_TERMINATED


def _image(array, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


def _ct_array(shape=(8, 16, 16)):
    return np.random.default_rng(0).normal(-300, 200, shape).astype(np.int16)


def _write(image, name):
    def make(tmp_path, ct_file):
        sitk.WriteImage(image() if callable(image) else image, str(tmp_path / name))
        return tmp_path / name, []

    return make


def _with_inf(value):
    array = _ct_array().astype(np.float32)
    array[1, 2, 3] = value
    return _image(array)


def _cut(name, keep=1 / 3):
    """A file of ``name``'s type holding only the first ``keep`` of its bytes (of the compressed stream for .gz)."""

    def make(tmp_path, ct_file):
        path = tmp_path / name
        sitk.WriteImage(_image(_ct_array()), str(path))
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
        return path, []

    return make


def _truncated_inside_gzip(tmp_path, ct_file):
    """A complete gzip stream of a cut-off NIfTI file."""
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(_image(_ct_array()), str(plain))
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()[:2000]))
    plain.unlink()
    return path, []


def _huge_header(tmp_path, ct_file):
    """A valid NIfTI file whose header claims 30000^3 voxels."""
    path = tmp_path / "huge.nii"
    sitk.WriteImage(_image(_ct_array((2, 2, 2))), str(path))
    header = bytearray(path.read_bytes())
    header[42:48] = struct.pack("<3h", 30000, 30000, 30000)  # dim[1..3] of the NIfTI-1 header
    path.write_bytes(header)
    return path, []


def _file(name, content):
    def make(tmp_path, ct_file):
        (tmp_path / name).write_bytes(content)
        return tmp_path / name, []

    return make


def _empty_folder(tmp_path, ct_file):
    (tmp_path / "dicom").mkdir()
    return tmp_path / "dicom", []


def _options(*extra):
    return lambda tmp_path, ct_file: (ct_file, list(extra))


def _checkpoint(make_checkpoint):
    def make(tmp_path, ct_file):
        return ct_file, ["--checkpoint", str(make_checkpoint(tmp_path))]

    return make


def _pickled(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x04K\x01.")
    return path


def _truncated_checkpoint(source):
    def make(tmp_path):
        path = tmp_path / "cut.safetensors"
        path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        shutil.copy(source.with_suffix(".json"), path.with_suffix(".json"))
        return path

    return make


def _output_exists(tmp_path, ct_file):
    (tmp_path / "out.nrrd").write_bytes(b"precious")
    return ct_file, []


def _output_is_input(tmp_path, ct_file):
    return tmp_path / "out.nrrd", []  # ct_file is copied there: input and output are one file


def _output_type(suffix):
    return lambda tmp_path, ct_file: (ct_file, ["-o", str(tmp_path / f"out{suffix}")])


CASES = {
    "2D": (_write(sitk.Image([16, 16], sitk.sitkInt16), "a.nrrd"), EXIT_INPUT, "2D"),
    "single slice": (_write(sitk.Image([16, 16, 1], sitk.sitkInt16), "a.nrrd"), EXIT_INPUT, "single slice"),
    "4D": (_write(sitk.Image([8, 8, 8, 2], sitk.sitkInt16), "a.nrrd"), EXIT_INPUT, "4D"),
    "RGB": (_write(sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3), "a.nrrd"), EXIT_INPUT, "components"),
    "empty": (_write(sitk.Image([8, 8, 8], sitk.sitkInt16), "a.nrrd"), EXIT_INPUT, "empty"),
    "constant": (_write(lambda: _image(np.full((8, 8, 8), 40, np.int16)), "a.nrrd"), EXIT_INPUT, "constant"),
    "NaN": (_write(lambda: _with_inf(np.nan), "a.nrrd"), EXIT_INPUT, "NaN/Inf"),
    "Inf": (_write(lambda: _with_inf(-np.inf), "a.mha"), EXIT_INPUT, "NaN/Inf"),
    "spacing 1e-9 mm": (_write(lambda: _image(_ct_array(), (1e-9, 1, 1)), "a.nrrd"), EXIT_INPUT, "not physical"),
    "spacing 5 m": (_write(lambda: _image(_ct_array(), (1, 1, 5000)), "a.nii.gz"), EXIT_INPUT, "not physical"),
    "corrupt": (_file("a.nii.gz", b"not an image at all" * 20), EXIT_INPUT, "cannot read"),
    "truncated .nii": (_cut("a.nii"), EXIT_INPUT, "truncated"),
    "truncated .nii.gz": (_cut("a.nii.gz"), EXIT_INPUT, "truncated"),
    "truncated inside .nii.gz": (_truncated_inside_gzip, EXIT_INPUT, "truncated"),
    "truncated .nrrd": (_cut("a.nrrd", keep=0.9), EXIT_INPUT, "cannot read"),
    "huge header": (_huge_header, EXIT_INPUT, "27,000,000,000,000 voxels"),
    "missing": (lambda tmp_path, ct_file: (tmp_path / "missing.nii.gz", []), EXIT_INPUT, "not found"),
    "empty DICOM folder": (_empty_folder, EXIT_INPUT, "no DICOM series"),
    "missing checkpoint": (_checkpoint(lambda p: p / "gone.safetensors"), EXIT_CHECKPOINT, "checkpoint not found"),
    "pickled checkpoint": (_checkpoint(_pickled), EXIT_CHECKPOINT, "pickled"),
    "truncated checkpoint": ("truncated checkpoint", EXIT_CHECKPOINT, "corrupt"),
    "wrong task": ("sr checkpoint", EXIT_CHECKPOINT, "is a sr model, not denoise"),
    "wrong modality": (_options("--modality", "mri"), EXIT_CHECKPOINT, "trained on CT"),
    "steps 100000": (_options("--steps", "100000"), EXIT_INPUT, "--steps 100000 must be between 1 and 999"),
    "steps 0": (_options("--steps", "0"), EXIT_INPUT, "--steps 0 must be"),
    "batch 0": (_options("--batch", "0"), EXIT_INPUT, "--batch 0 must be at least 1"),
    "negative seed": (_options("--seed", "-1"), EXIT_INPUT, "--seed -1 must be"),
    "overlap 1": (_options("--overlap", "1"), EXIT_INPUT, "overlap 1.0 must be in [0, 1)"),
    "patch 7": (_options("--patch", "7"), EXIT_INPUT, "multiple of 2"),
    "samples 9": (_options("--samples", "9"), EXIT_INPUT, "between 1 and 8"),
    "output type": (_output_type(".png"), EXIT_INPUT, "must end in .nii.gz, .nii, .nrrd, .mha"),
    "output exists": (_output_exists, EXIT_INPUT, "exists; choose another output or pass --overwrite"),
    "output = input": (_output_is_input, EXIT_INPUT, "would overwrite the input"),
    "SIGTERM mid-run": (_options("--steps", "900"), EXIT_TERMINATED, "terminated (SIGTERM)"),
}


def _digest(path):
    """sha256 of a file, of every file in a folder, or None for nothing there."""
    if path.is_dir():
        return {p.name: _digest(p) for p in sorted(path.iterdir())}
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _run_in_process(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def _run_and_terminate(argv):
    """Run the command as the Slicer worker does and send SIGTERM once sampling has started."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sdenhance", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for line in process.stdout:
        if json.loads(line)["event"] == "start":
            process.send_signal(signal.SIGTERM)
            break
    _, err = process.communicate(timeout=120)
    return process.returncode, err


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_cleanly(case, tmp_path, ct_file, tiny_checkpoints, capsys):
    make, code, message = CASES[case]
    if make == "truncated checkpoint":
        make = _checkpoint(_truncated_checkpoint(tiny_checkpoints["denoise"]))
    elif make == "sr checkpoint":
        make = _checkpoint(lambda tmp_path: tiny_checkpoints["sr"])
    source, extra = make(tmp_path, ct_file)
    if case == "output = input":
        shutil.copy(ct_file, source)
    out = tmp_path / "out.nrrd"
    before = _digest(tmp_path)  # the input, any existing output, and nothing else
    argv = ["enhance", str(source), "-o", str(out), "--checkpoint", str(tiny_checkpoints["denoise"])]
    argv += ["--progress", "jsonl", "--device", "cpu", *extra]  # a later -o / --checkpoint wins

    got, err = _run_and_terminate(argv) if case == "SIGTERM mid-run" else _run_in_process(argv, capsys)

    assert got == code, err
    assert message in err
    assert "Traceback" not in err
    assert _digest(tmp_path) == before  # no output or partial file written, the input and an existing output kept
