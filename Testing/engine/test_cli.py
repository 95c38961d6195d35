import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
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
    assert "warning" not in [e["event"] for e in events]  # its card records no spacing range to warn about
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


def _with_spacing_range(checkpoint, tmp_path, spacing_range):
    """A copy of ``checkpoint`` whose card records the given training spacing range."""
    copy = tmp_path / f"ranged-{checkpoint.name}"
    copy.write_bytes(checkpoint.read_bytes())
    meta = json.loads(checkpoint.with_suffix(".json").read_text(encoding="utf-8"))
    meta["card"]["spacing_range_mm"] = spacing_range
    copy.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")
    return copy


@pytest.mark.parametrize(
    "task, z_range, warned",
    [
        ("denoise", [1.0, 2.0], "z 2.5 mm (trained 1-2)"),  # the input's 2.5 mm slices
        ("denoise", [2.0, 3.0], None),
        ("sr", [1.0, 2.0], None),  # the model sees the finer grid: 1.25 mm
        ("sr", [2.0, 3.0], "z 1.25 mm (trained 2-3)"),
    ],
)
def test_spacing_outside_the_cards_training_range_is_warned_about(
    tmp_path, ct_file, tiny_checkpoints, capsys, task, z_range, warned
):
    ranges = {"x": [0.5, 1.0], "y": [0.5, 1.0], "z": z_range}
    checkpoint = _with_spacing_range(tiny_checkpoints[task], tmp_path, ranges)
    assert _enhance(ct_file, tmp_path / "out.nrrd", checkpoint, "--task", task, "--steps", "1") == 0
    warnings = [e["message"] for e in _events(capsys) if e["event"] == "warning"]
    assert len(warnings) == (1 if warned else 0)
    assert not warned or f"was trained on: {warned}; the result may be poor" in warnings[0]
