"""Preview of a slab around one slice, and the time estimate made before a run starts."""

import json

import numpy as np
import pytest
from sdenhance.cli import main
from sdenhance.io import Volume, fine_grid, read_volume, write_volume
from sdenhance.pipeline import Enhancement, EnhanceOptions
from sdenhance.registry import resolve
from sdenhance.sampler import count_windows, covering_slab, evaluations, foreground_windows, sampling_input
from sdenhance.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def mri_checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), task="denoise", modality="mri")


@pytest.fixture
def deep_mri(tmp_path):
    """45 slices: several z-windows of the tiny model's 16-slice patch, the last one shifted to end the volume."""
    rng = np.random.default_rng(1)
    array = (np.linspace(0, 400, 20)[None, None, :] + rng.normal(0, 20, (45, 20, 20))).astype(np.float32)
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    return write_volume(Volume(array, (0.9, 0.8, 2.0), (5.0, -3.0, 40.0), direction), tmp_path / "mri.nii.gz")


def _run(source, out, checkpoint, *extra, capsys):
    """``sdenhance enhance`` with JSON-lines progress: (exit code, events)."""
    args = ["enhance", str(source), "-o", str(out), "--checkpoint", str(checkpoint), "--progress", "jsonl"]
    code = main([*args, *extra])
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_the_slab_is_the_z_windows_that_hold_the_slice():
    # 80 slices, 16-slice windows at overlap 0.25: starts 0, 12, ..., 60 and the last one at 64
    assert covering_slab(80, 40, 41, 16, 0.25) == (36, 52)  # one window holds slice 40
    assert covering_slab(80, 38, 39, 16, 0.25) == (24, 52)  # two overlap at slice 38
    assert covering_slab(80, 79, 80, 16, 0.25) == (64, 80)
    assert covering_slab(80, 40, 41, 16, 0.0) == (32, 48)
    assert covering_slab(10, 3, 4, 16, 0.25) == (0, 10)  # shallower than a patch: the whole volume


@pytest.mark.parametrize("samples", [1, 4])  # the fourth sample is flipped along z: a window grid of its own
@pytest.mark.parametrize("index", [0, 13, 22, 44])
def test_with_one_pass_the_preview_slice_is_the_whole_runs_slice(
    tmp_path, deep_mri, mri_checkpoint, capsys, index, samples
):
    options = ["--steps", "1", "--samples", str(samples), "--seed", "3"]
    assert _run(deep_mri, tmp_path / "full.nii.gz", mri_checkpoint, *options, capsys=capsys)[0] == 0
    code, events = _run(
        deep_mri, tmp_path / "preview.nii.gz", mri_checkpoint, *options, "--preview", str(index), capsys=capsys
    )
    assert code == 0
    slab = events[-1]["preview"]
    assert events[0]["preview"] == slab and slab["axis"] == "z"
    start, stop = slab["start"], slab["stop"]
    assert (start, stop) == covering_slab(45, index, index + 1, 16, 0.25) and stop - start < 45

    source, full, preview = (read_volume(p) for p in (deep_mri, tmp_path / "full.nii.gz", tmp_path / "preview.nii.gz"))
    assert preview.array.shape == (stop - start, 20, 20)
    np.testing.assert_array_equal(preview.array[index - start], full.array[index])
    assert not np.array_equal(preview.array[index - start], source.array[index])  # the model did run
    # placed where the slab lies in the input
    np.testing.assert_allclose(preview.origin, source.index_to_physical(np.array([[0, 0, start]]))[0], atol=1e-4)
    np.testing.assert_allclose(preview.spacing, source.spacing, atol=1e-6)
    np.testing.assert_allclose(preview.direction, source.direction, atol=1e-6)


def test_with_more_passes_a_window_that_overlaps_no_other_previews_exactly(tmp_path, deep_mri, mri_checkpoint, capsys):
    options = ["--steps", "2", "--overlap", "0"]  # windows at 0, 16 and 29: [0, 16) overlaps no other
    assert _run(deep_mri, tmp_path / "full.nii.gz", mri_checkpoint, *options, capsys=capsys)[0] == 0
    code, events = _run(deep_mri, tmp_path / "p.nii.gz", mri_checkpoint, *options, "--preview", "5", capsys=capsys)
    assert code == 0 and (events[-1]["preview"]["start"], events[-1]["preview"]["stop"]) == (0, 16)
    np.testing.assert_array_equal(
        read_volume(tmp_path / "p.nii.gz").array, read_volume(tmp_path / "full.nii.gz").array[:16]
    )


def test_a_super_resolution_preview_is_a_slab_of_the_fine_grid(tmp_path, tiny_checkpoints, capsys):
    rng = np.random.default_rng(2)
    array = (rng.normal(40, 30, (20, 24, 20)) + np.linspace(-900, 300, 20)).astype(np.int16)
    source = write_volume(Volume(array, (0.75, 0.8, 2.5), (12.0, -7.5, 100.0)), tmp_path / "thick.nrrd")
    options = ["--task", "sr", "--steps", "1"]
    assert _run(source, tmp_path / "full.nrrd", tiny_checkpoints["sr"], *options, capsys=capsys)[0] == 0
    code, events = _run(source, tmp_path / "p.nrrd", tiny_checkpoints["sr"], *options, "--preview", "9", capsys=capsys)
    assert code == 0
    start, stop = events[-1]["preview"]["start"], events[-1]["preview"]["stop"]
    assert (start, stop) == covering_slab(40, 18, 20, 16, 0.25)  # input slice 9 is fine slices 18 and 19

    full, preview, grid = (
        read_volume(tmp_path / "full.nrrd"),
        read_volume(tmp_path / "p.nrrd"),
        fine_grid(read_volume(source), 2, "z"),
    )
    np.testing.assert_array_equal(preview.array[18 - start : 20 - start], full.array[18:20])
    np.testing.assert_allclose(preview.origin, grid.index_to_physical(np.array([[0, 0, start]]))[0], atol=1e-4)
    np.testing.assert_allclose(preview.spacing, grid.spacing, atol=1e-6)


def test_preview_without_a_value_is_the_middle_slice(tmp_path, deep_mri, mri_checkpoint, capsys):
    code, events = _run(deep_mri, tmp_path / "p.nii.gz", mri_checkpoint, "--preview", "--steps", "1", capsys=capsys)
    assert code == 0
    assert (events[-1]["preview"]["start"], events[-1]["preview"]["stop"]) == covering_slab(45, 22, 23, 16, 0.25)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--preview", "45"], "slice index from 0 to 44"),
        (["--preview", "two"], "not a slice index"),
    ],
)
def test_a_bad_preview_slice_exits_2(tmp_path, deep_mri, mri_checkpoint, capsys, extra, message):
    out = tmp_path / "p.nii.gz"
    args = ["enhance", str(deep_mri), "-o", str(out), "--checkpoint", str(mri_checkpoint), *extra]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_the_estimate_counts_the_windows_the_network_runs_on(tiny_checkpoints):
    # a CT with an air border: the windows that are all air are skipped by the run and by the estimate alike
    rng = np.random.default_rng(0)
    array = rng.normal(-1000, 5, (20, 48, 48)).astype(np.float32)
    array[:, 8:30, 8:30] = rng.normal(40, 30, (20, 22, 22))
    volume = Volume(array.astype(np.int16), (0.8, 0.8, 2.5))
    card = resolve(str(tiny_checkpoints["denoise"]))
    # PyTorch runs the network, so that a hook on it counts the windows
    enhancement = Enhancement(volume, card, EnhanceOptions(steps=2, samples=2, backend="torch"))
    planned = [
        len(foreground_windows(sampling_input(np.flip(enhancement.y, r.flip), (16, 16, 16), r.region), r.config))
        for r in enhancement.runs
    ]
    windows_run = []
    hook = enhancement.model.register_forward_hook(lambda module, args, out: windows_run.append(len(args[0])))
    assert enhancement.estimate_seconds() > 0
    windows_run.clear()  # the calibration's own calls
    enhancement.run()
    hook.remove()
    assert sum(windows_run) == evaluations(enhancement.plan.sampler) * sum(planned)
    assert 0 < planned[0] < count_windows((20, 48, 48), (16, 16, 16), 0.25)  # some windows are all air


def test_the_start_event_and_the_bar_tell_the_estimate(tmp_path, deep_mri, mri_checkpoint, capsys):
    code, events = _run(deep_mri, tmp_path / "o.nii.gz", mri_checkpoint, "--steps", "2", capsys=capsys)
    assert code == 0 and events[0]["estimate_s"] > 0 and events[0]["calibration_s"] >= 0
    args = ["enhance", str(deep_mri), "-o", str(tmp_path / "b.nii.gz"), "--checkpoint", str(mri_checkpoint)]
    assert main([*args, "--progress", "bar"]) == 0
    assert "; estimated " in capsys.readouterr().err
