import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from sdenhance.cli import main
from sdenhance.io import fine_grid, read_volume, write_volume


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _events(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def _enhance(source, out, checkpoint, *extra, progress="jsonl") -> int:
    """``sdenhance enhance SOURCE -o OUT --checkpoint CHECKPOINT --progress PROGRESS EXTRA...``; the exit code."""
    args = ["enhance", str(source), "-o", str(out), "--checkpoint", str(checkpoint), "--progress", progress]
    return main([*args, *extra])


def test_denoise_keeps_geometry_and_reports_jsonl(tmp_path, ct_file, tiny_checkpoints, capsys):
    before = _digest(ct_file)
    out = tmp_path / "out.nii.gz"
    assert _enhance(ct_file, out, tiny_checkpoints["denoise"], "--steps", "2") == 0
    events = _events(capsys)
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "done"
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2] and steps[-1]["total"] == 2
    assert events[0]["output_shape"] == events[0]["input_shape"] == [10, 24, 20]
    source, result = read_volume(ct_file), read_volume(out)
    assert result.array.dtype == np.int16 and result.array.shape == source.array.shape
    np.testing.assert_allclose(result.origin, source.origin, atol=1e-5)
    np.testing.assert_allclose(result.spacing, source.spacing, atol=1e-6)
    np.testing.assert_allclose(result.direction, source.direction, atol=1e-6)
    assert not np.array_equal(result.array, source.array)  # the model really ran
    assert _digest(ct_file) == before  # the input is never touched


def test_sr_output_has_finer_grid_with_same_extent(tmp_path, ct_file, tiny_checkpoints):
    out = tmp_path / "sr.nrrd"
    assert _enhance(ct_file, out, tiny_checkpoints["sr"], "--task", "sr", progress="none") == 0
    result, expected = read_volume(out), fine_grid(read_volume(ct_file), 2, "z")
    assert result.array.shape == expected.array.shape == (20, 24, 20)
    np.testing.assert_allclose(result.origin, expected.origin, atol=1e-5)
    np.testing.assert_allclose(result.spacing, expected.spacing, atol=1e-6)


def test_existing_output_needs_overwrite(tmp_path, ct_file, tiny_checkpoints):
    out = tmp_path / "out.nrrd"
    out.write_bytes(b"precious")
    assert _enhance(ct_file, out, tiny_checkpoints["denoise"], progress="none") == 2
    assert out.read_bytes() == b"precious"
    assert _enhance(ct_file, out, tiny_checkpoints["denoise"], "--overwrite", progress="none") == 0
    assert read_volume(out).array.shape == (10, 24, 20)


def _write(tmp_path, image, name="bad.nrrd"):
    sitk.WriteImage(image, str(tmp_path / name))
    return tmp_path / name


@pytest.mark.parametrize(
    "make_input, code, message",
    [
        (lambda p: _write(p, sitk.Image([16, 16], sitk.sitkInt16)), 2, "2D"),
        (lambda p: _write(p, sitk.Image([16, 16, 16, 2], sitk.sitkInt16)), 2, "4D"),
        (lambda p: _write(p, sitk.Image([16, 16, 16], sitk.sitkInt16)), 2, "empty"),
        (lambda p: p / "missing.nii.gz", 2, "not found"),
    ],
)
def test_bad_inputs_exit_2_with_advice(tmp_path, tiny_checkpoints, capsys, make_input, code, message):
    path = make_input(tmp_path)
    assert _enhance(path, tmp_path / "o.nrrd", tiny_checkpoints["denoise"]) == code
    error = _events(capsys)[-1]
    assert error["event"] == "error" and error["kind"] == "input" and message in error["message"]
    assert not (tmp_path / "o.nrrd").exists()


def test_nan_volume_is_refused(tmp_path, tiny_checkpoints, capsys):
    array = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    array[2, 2, 2] = np.inf
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    assert _enhance(path, tmp_path / "o.nrrd", tiny_checkpoints["denoise"], progress="bar") == 2
    assert "NaN/Inf" in capsys.readouterr().err


def test_checkpoint_problems_exit_3(tmp_path, ct_file, tiny_checkpoints, capsys):
    def run(checkpoint, *extra):
        return _enhance(ct_file, tmp_path / "o.nrrd", checkpoint, *extra)

    assert run(tmp_path / "missing.safetensors") == 3
    assert run(tiny_checkpoints["sr"]) == 3  # an SR model asked to denoise
    assert "is a sr model, not denoise" in _events(capsys)[-1]["message"]
    assert run(tiny_checkpoints["denoise"], "--modality", "mri") == 3
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"\x80\x04K\x01.")
    assert run(pickle) == 3
    assert "pickled" in _events(capsys)[-1]["message"]
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"garbage" * 10)
    corrupt.with_suffix(".json").write_text(
        tiny_checkpoints["denoise"].with_suffix(".json").read_text(encoding="utf-8")
    )
    assert run(corrupt) == 3
    assert "corrupt" in _events(capsys)[-1]["message"]
    assert not (tmp_path / "o.nrrd").exists()


def test_module_entry_point_runs_as_a_process(tmp_path, ct_file, tiny_checkpoints):
    """What the Slicer worker launches: `python -m sdenhance enhance ... --progress jsonl`."""
    out = tmp_path / "o.mha"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdenhance",
            "enhance",
            str(ct_file),
            "-o",
            str(out),
            "--checkpoint",
            str(tiny_checkpoints["denoise"]),
            "--progress",
            "jsonl",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[-1]["event"] == "done" and lines[-1]["output"] == str(out)
    assert read_volume(out).array.shape == (10, 24, 20)


def test_models_lists_nothing_or_valid_cards(capsys):
    assert main(["models", "--json"]) == 0
    for card in json.loads(capsys.readouterr().out):
        assert card["task"] in ("denoise", "sr") and card["path"].endswith(".safetensors")


def test_write_then_enhance_small_volume_smaller_than_patch(tmp_path, tiny_checkpoints):
    from sdenhance.io import Volume

    path = write_volume(
        Volume(np.linspace(-500, 500, 4 * 5 * 6).reshape(4, 5, 6).astype(np.float32), (1.0, 1.0, 1.0)),
        tmp_path / "small.nrrd",
    )
    assert _enhance(path, tmp_path / "o.nrrd", tiny_checkpoints["denoise"], progress="none") == 0
    result = read_volume(tmp_path / "o.nrrd")
    assert result.array.shape == (4, 5, 6) and result.array.dtype == np.float32
