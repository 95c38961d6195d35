"""Noise-level estimates from the scan alone, and the warning when a scan is outside a model's trained range."""

import json

import numpy as np
import pytest
from sdenhance.cli import main
from sdenhance.degrade import ct_image_noise, make_degradation
from sdenhance.io import Volume, write_volume
from sdenhance.noise import NoiseEstimate, estimate_noise, noise_outside_range
from sdenhance.phantom import torso_phantom
from sdenhance.registry import read_card

SPACING = (0.8, 0.8, 2.5)


@pytest.fixture(scope="module")
def torso():
    return torso_phantom((12, 128, 128), SPACING).array.astype(np.float32)


@pytest.mark.parametrize("texture", ["white", "hann", "ramp"])
def test_ct_estimate_follows_the_added_noise_whatever_its_texture(torso, texture):
    levels = [8.0, 20.0, 60.0, 150.0]
    estimates = [estimate_noise(ct_image_noise(torso, s, np.random.default_rng(0), [texture]), "ct") for s in levels]
    assert all(e.unit == "HU" for e in estimates)
    for level, estimate in zip(levels, estimates, strict=True):
        assert estimate.value == pytest.approx(level, rel=0.25)


def test_mri_snr_and_pet_cov_estimates_order_the_noise_levels(torso):
    body = Volume(torso + 1024.0, SPACING)  # a piecewise-constant positive image

    def estimate(spec, modality):
        return estimate_noise(make_degradation(spec)(body, np.random.default_rng(0))[0].array, modality)

    snrs = [estimate({"kind": "mri_rician", "snr": snr}, "mri") for snr in (5, 15, 40)]
    assert [e.unit for e in snrs] == ["SNR"] * 3
    assert snrs[0].value < snrs[1].value < snrs[2].value and snrs[1].value == pytest.approx(15, rel=0.3)
    covs = [estimate({"kind": "pet_low_count", "fraction": f}, "pet") for f in (0.05, 0.2, 0.8)]
    assert covs[0].value > covs[1].value > covs[2].value > 0


def test_a_scan_without_flat_tissue_gives_no_estimate_and_no_warning():
    air_and_bone = np.where(np.indices((6, 40, 40))[2] % 2 == 0, -1000.0, 1500.0).astype(np.float32)
    estimate = estimate_noise(air_and_bone, "ct")
    assert np.isnan(estimate.value)
    assert noise_outside_range({"card": {"noise_range": {"low": 5, "high": 40, "unit": "HU"}}}, estimate, "m") is None


@pytest.mark.parametrize(
    ("estimate", "expected"),
    [
        (NoiseEstimate(90.0, "HU"), "noise ~90 HU, outside the 5-40 HU that 'm' was trained on: it may leave"),
        (NoiseEstimate(3.0, "HU"), "noise ~3 HU, outside the 5-40 HU that 'm' was trained on: there is little"),
        (NoiseEstimate(45.0, "HU"), None),  # within the estimate's own tolerance
        (NoiseEstimate(20.0, "% CoV"), None),  # another unit: not comparable
    ],
)
def test_noise_warning_names_the_estimate_and_the_trained_range(estimate, expected):
    card = {"card": {"noise_range": {"low": 5, "high": 40, "unit": "HU"}}}
    warning = noise_outside_range(card, estimate, "m")
    assert warning == expected if expected is None else warning.startswith(expected)
    assert noise_outside_range({"card": {}}, estimate, "m") is None  # a card without a range never warns


def test_snr_is_noisier_when_lower():
    card = {"card": {"noise_range": {"low": 4, "high": 25, "unit": "SNR"}}}
    assert "may leave much of the noise" in noise_outside_range(card, NoiseEstimate(2.0, "SNR"), "m")
    assert "little noise to remove" in noise_outside_range(card, NoiseEstimate(60.0, "SNR"), "m")


def test_enhance_warns_with_numbers_when_the_scan_is_noisier_than_the_model_was_trained_for(
    tmp_path, torso, tiny_checkpoints, capsys
):
    noisy = Volume(ct_image_noise(torso, 90.0, np.random.default_rng(1)).astype(np.int16), SPACING)
    source = write_volume(noisy, tmp_path / "noisy.nrrd")
    checkpoint = tmp_path / "ranged.safetensors"
    checkpoint.write_bytes(tiny_checkpoints["denoise"].read_bytes())
    meta = json.loads(tiny_checkpoints["denoise"].with_suffix(".json").read_text(encoding="utf-8"))
    meta["card"]["noise_range"] = {"low": 5.0, "high": 40.0, "unit": "HU"}
    checkpoint.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")
    args = ["enhance", str(source), "-o", str(tmp_path / "out.nrrd"), "--checkpoint", str(checkpoint)]
    assert main([*args, "--steps", "1", "--progress", "jsonl"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert len(warnings) == 1 and "that 'tiny-denoise-ct' was trained on: it may leave much of the noise" in warnings[0]
    level = float(warnings[0].split("noise ~")[1].split(" HU")[0])
    assert level == pytest.approx(90.0, rel=0.25)
    start = next(e for e in events if e["event"] == "start")
    assert start["noise"].startswith("noise ~")


def test_the_model_list_names_the_trained_noise_range(tiny_checkpoints):
    card = read_card(tiny_checkpoints["denoise"])
    assert "Trained on input noise" not in card.describe()
    card.meta["card"]["noise_range"] = {"low": 5.0, "high": 40.0, "unit": "HU"}
    assert card.describe().endswith("Trained on input noise 5-40 HU.")
