"""Several samples: their mean is the result and their spread the uncertainty, each sample a flipped view."""

import json

import numpy as np
import pytest
import torch
from sdenhance.cli import main
from sdenhance.io import Volume, read_volume, write_volume
from sdenhance.pipeline import FLIPS, EnhanceOptions, enhance_volume, pick_precision, untrained_timesteps_warning
from sdenhance.registry import MAX_SAMPLES, read_card, resolve
from sdenhance.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def mri_card(tmp_path_factory):
    return resolve(str(make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), task="denoise", modality="mri")))


@pytest.fixture
def mri_volume():
    """An asymmetric float volume (a ramp plus noise), so that a flip that is not undone would show."""
    rng = np.random.default_rng(1)
    array = (np.linspace(0, 400, 20)[None, None, :] + rng.normal(0, 20, (18, 20, 20))).astype(np.float32)
    return Volume(array, (0.9, 0.9, 2.0), (5.0, -3.0, 40.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def test_two_samples_are_the_mean_and_spread_of_a_plain_and_a_flipped_run(mri_card, mri_volume):
    options = EnhanceOptions(steps=2, seed=4)
    both = enhance_volume(mri_volume, mri_card, EnhanceOptions(steps=2, seed=4, samples=2))

    first = enhance_volume(mri_volume, mri_card, options).volume.array
    # sample 2 is the run on the volume flipped along x, with the next seed, flipped back
    flipped = mri_volume.with_array(np.ascontiguousarray(mri_volume.array[:, :, ::-1]))
    second = enhance_volume(flipped, mri_card, EnhanceOptions(steps=2, seed=5)).volume.array[:, :, ::-1]

    assert not np.allclose(first, second, atol=1e-3)  # the samples do differ
    np.testing.assert_allclose(both.volume.array, (first + second) / 2, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(both.spread.array, np.abs(first - second) / np.sqrt(2), rtol=1e-5, atol=1e-4)
    assert both.spread.spacing == mri_volume.spacing and both.spread.array.dtype == np.float32
    assert enhance_volume(mri_volume, mri_card, options).spread is None


def test_every_allowed_sample_has_a_flip_of_its_own():
    assert len(FLIPS) == len(set(FLIPS)) == MAX_SAMPLES


def test_cli_writes_uncertainty_and_counts_every_sample_in_progress(tmp_path, mri_card, mri_volume, capsys):
    source = write_volume(mri_volume, tmp_path / "mri.nii.gz")
    out, spread = tmp_path / "out.nii.gz", tmp_path / "spread.nii.gz"
    args = ["enhance", str(source), "-o", str(out), "--checkpoint", str(mri_card.path), "--steps", "2"]
    code = main(args + ["--samples", "3", "--uncertainty", str(spread), "--progress", "jsonl"])

    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert events[0]["evaluations"] == 6
    assert [e["step"] for e in events if e["event"] == "step"][-1] == 6
    assert events[-1]["samples"] == 3 and events[-1]["uncertainty"] == str(spread)
    written = read_volume(spread)
    assert written.array.shape == mri_volume.array.shape and written.origin == pytest.approx(mri_volume.origin)
    assert written.array.min() >= 0 and written.array.max() > 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--uncertainty", "u.nii.gz"], "add --samples"),
        (["--samples", "9"], "between 1 and 8"),
        (["--samples", "2", "--uncertainty", "out.nii.gz"], "same file"),
    ],
)
def test_bad_sample_requests_exit_2_with_advice(tmp_path, mri_card, mri_volume, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    source = write_volume(mri_volume, tmp_path / "mri.nii.gz")
    code = main(["enhance", str(source), "-o", "out.nii.gz", "--checkpoint", str(mri_card.path)] + extra)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.nii.gz").exists()


def test_a_non_ct_scan_without_modality_is_not_sent_through_a_ct_model(tmp_path, mri_volume, capsys):
    source = write_volume(mri_volume, tmp_path / "mri.nii.gz")
    ct_checkpoint = make_tiny_checkpoint(tmp_path, task="denoise", modality="ct")
    args = ["enhance", str(source), "-o", str(tmp_path / "out.nii.gz"), "--checkpoint", str(ct_checkpoint)]

    assert main(args) == 2
    assert "--modality mri" in capsys.readouterr().err
    assert not (tmp_path / "out.nii.gz").exists()
    assert main(args + ["--modality", "mri"]) == 3  # said explicitly: the CT checkpoint is then refused as such


@pytest.mark.parametrize(
    ("native", "expected"),
    [((), "fp32"), (("_is_avx512_bf16_supported",), "bf16"), (("_is_amx_tile_supported",), "bf16")],
)
def test_auto_precision_is_bf16_only_on_cpus_that_compute_in_bf16(monkeypatch, native, expected):
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda probe=probe: probe in native, raising=False)
    assert pick_precision("auto", torch.device("cpu")) == expected
    assert pick_precision("auto", torch.device("cuda")) == "fp32"
    assert pick_precision("fp16", torch.device("cpu")) == "fp16"


def test_steps_whose_timesteps_were_never_trained_are_warned_about(tiny_checkpoints, tmp_path, ct_file, capsys):
    card = read_card(tiny_checkpoints["denoise"])  # trained with K = 2: timesteps 500 and 999
    assert untrained_timesteps_warning(card, 1) is None and untrained_timesteps_warning(card, 2) is None
    warning = untrained_timesteps_warning(card, 4)
    assert "at timesteps it was never trained on (250, 749; trained: 500, 999)" in warning
    assert warning.endswith("use --steps 1 or 2")
    dense = read_card(tiny_checkpoints["denoise"])
    dense.meta["training"] = {"timesteps_drawn": "dense"}
    assert untrained_timesteps_warning(dense, 4) is None
    args = ["enhance", str(ct_file), "-o", str(tmp_path / "o.nrrd"), "--checkpoint", str(tiny_checkpoints["denoise"])]
    assert main([*args, "--steps", "3", "--progress", "jsonl"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert any(e["event"] == "warning" and "--steps 3 evaluates" in e["message"] for e in events)


def test_a_card_can_make_fewer_passes_the_default_and_the_user_still_chooses(tiny_checkpoints, tmp_path, ct_file):
    card = read_card(tiny_checkpoints["denoise"])  # trained with K = 2
    volume = read_volume(ct_file)
    assert enhance_volume(volume, card, EnhanceOptions(seed=1)).sampler.steps == 2
    card.meta["sampling_steps"] = 1
    one = enhance_volume(volume, card, EnhanceOptions(seed=1))
    assert one.sampler.steps == 1
    np.testing.assert_array_equal(
        one.volume.array, enhance_volume(volume, card, EnhanceOptions(steps=1, seed=1)).volume.array
    )
    assert enhance_volume(volume, card, EnhanceOptions(steps=2, seed=1)).sampler.steps == 2
