"""Classical baselines, ``sdenhance evaluate`` and ``sdenhance demo`` on small synthetic volumes."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage
from sdenhance import registry
from sdenhance.baselines import BASELINES, baselines_for
from sdenhance.cli import main
from sdenhance.degrade import thick_slices
from sdenhance.demo import demo
from sdenhance.evaluate import Case, Suite, meets_floor, noise_record, parse_degradation
from sdenhance.io import Volume, centre_crop, fine_grid, read_volume, write_volume
from sdenhance.metrics import quality
from sdenhance.phantom import torso_phantom

OBLIQUE = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def phantom_file(tmp_path_factory):
    """A small torso phantom (int16 HU) on disk."""
    return write_volume(torso_phantom((14, 48, 48), (7.0, 7.0, 2.5)), tmp_path_factory.mktemp("data") / "torso.nii.gz")


@pytest.mark.parametrize("name", baselines_for("denoise"))
def test_denoising_baselines_reduce_noise(name):
    """The setting the evaluator would pick beats the noisy input and leaves less noise in flat regions."""
    spacing = (3.0, 3.0, 2.5)
    reference = torso_phantom((12, 64, 64), spacing).array.astype(np.float32)
    noisy = reference + np.random.default_rng(0).normal(0.0, 60.0, reference.shape).astype(np.float32)
    flat = ndimage.maximum_filter(ndimage.generic_gradient_magnitude(reference, ndimage.sobel), 5) < 100
    oracle = {"noise": noisy - reference} if BASELINES[name].oracle_noise else {}
    if BASELINES[name].skip_reason(noisy.size):
        pytest.skip(BASELINES[name].skip_reason(noisy.size))
    outputs = [BASELINES[name].run(noisy, spacing, **oracle, **settings) for settings in BASELINES[name].sweep]
    best = max(outputs, key=lambda output: quality(reference, output, "ct")["psnr_window"])
    assert quality(reference, best, "ct")["psnr_window"] > quality(reference, noisy, "ct")["psnr_window"] + 0.5
    assert np.std((best - reference)[flat]) < 0.8 * np.std((noisy - reference)[flat])


@pytest.mark.parametrize("name", baselines_for("sr"))
def test_sr_baselines_land_on_the_fine_grid(name):
    """A through-plane ramp survives thickening and upsampling: any half-slice shift would show as its slope."""
    z = np.arange(80, dtype=np.float32)[:, None, None]
    original = Volume(np.broadcast_to(10.0 * z, (80, 6, 5)).copy(), (0.7, 0.8, 1.5), (3.0, -2.0, 50.0), OBLIQUE)
    thick = thick_slices(original, 4, "z")
    upsampled = BASELINES[name].run(thick.array, thick.spacing, factor=4, axis="z")
    assert upsampled.shape == fine_grid(thick, 4, "z").array.shape == original.array.shape
    interior = slice(16, -16)  # away from the slab ends, where boundary conditions bend the ramp
    error = upsampled[interior] - original.array[interior]
    assert abs(error.mean()) < 0.5  # a shift by half a thin slice would be 5
    assert np.abs(error).max() < 2.0  # windowed-sinc ripple; B-spline reproduces the ramp exactly


def test_centre_crop_keeps_physical_positions():
    volume = Volume(
        np.arange(6 * 8 * 10, dtype=np.float32).reshape(6, 8, 10), (0.5, 0.7, 2.0), (1.0, 2.0, 3.0), OBLIQUE
    )
    cropped = centre_crop(volume, (4, 4, 20))  # x is clamped to the volume's 10
    assert cropped.array.shape == (4, 4, 10)
    assert cropped.array[0, 0, 0] == volume.array[1, 2, 0]
    np.testing.assert_allclose(cropped.index_to_physical([[0, 0, 0]]), volume.index_to_physical([[0, 2, 1]]))


def test_presets_and_specs_parse():
    assert parse_degradation("ct25") == ({"kind": "ct_low_dose", "dose": 0.25}, "ct")
    assert parse_degradation('{"kind": "thick_slices", "factor": 4, "axis": "z"}')[1] is None
    with pytest.raises(ValueError, match="dose"):
        parse_degradation("{kind: ct_low_dose}")


def _evaluate(tmp_path, *args):
    out = tmp_path / "evaluation"
    code = main(["evaluate", *map(str, args), "--threads", "1", "-o", str(out)])
    report = json.loads((out / "results.json").read_text(encoding="utf-8")) if code == 0 else None
    return code, report, out


def _finite_scores(report):
    return all(math.isfinite(v) for c in report["cases"] for m in c["methods"].values() for v in m["scores"].values())


def test_evaluate_denoising_end_to_end(tmp_path, phantom_file, tiny_checkpoints):
    code, report, out = _evaluate(
        tmp_path, phantom_file, "--degradation", "ct25", "--checkpoint", tiny_checkpoints["denoise"],
        "--methods", "gaussian,curvature,nlm,ours", "--crop", "12,40,40", "--steps", "2",
    )  # fmt: skip
    assert code == 0
    (case,) = report["cases"]
    assert list(case["methods"]) == ["degraded", "gaussian", "curvature", "nlm", "ours"]
    assert case["shape_zyx"] == [12, 40, 40]
    assert _finite_scores(report) and set(case["methods"]["ours"]["scores"]) == {
        "psnr_window", "ssim_window", "psnr_full", "ssim_full"
    }  # fmt: skip
    assert case["methods"]["gaussian"]["settings"] in BASELINES["gaussian"].sweep
    assert case["methods"]["ours"]["settings"]["steps"] == 2
    assert case["methods"]["ours"]["settings"]["precision"] in ("fp32", "bf16")  # what auto chose here
    assert len(case["methods"]["curvature"]["sweep"]) == len(BASELINES["curvature"].sweep)
    assert all(m["seconds"] > 0 for name, m in case["methods"].items() if name != "degraded")
    assert (out / case["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "oracle-tuned" in table and "ours (tiny-denoise-ct)" in table
    assert "mean of" not in table  # one case: a mean would only repeat its rows


@pytest.mark.parametrize(
    ("degradation", "scored_slices"),
    [("ct-sr2", 14), ("{kind: thick_slices, factor: 2, axis: z, random_phase: true}", 12)],  # seed 0: phase 1
)
def test_evaluate_super_resolution_end_to_end(tmp_path, phantom_file, tiny_checkpoints, degradation, scored_slices):
    code, report, out = _evaluate(
        tmp_path, phantom_file, "--degradation", degradation, "--checkpoint", tiny_checkpoints["sr"]
    )
    assert code == 0
    (case,) = report["cases"]
    assert list(case["methods"]) == ["degraded", "bspline", "lanczos", "ours"]
    assert case["shape_zyx"] == [scored_slices, 48, 48] and _finite_scores(report)
    assert (out / case["figure"]).is_file()


def test_slow_baseline_is_skipped_with_its_reason(tmp_path, phantom_file, monkeypatch):
    monkeypatch.setitem(BASELINES, "nlm", replace(BASELINES["nlm"], max_voxels=1000))
    code, report, out = _evaluate(tmp_path, phantom_file, "--degradation", "ct25", "--methods", "gaussian,nlm")
    assert code == 0  # no checkpoint needed without "ours"
    assert report["cases"][0]["methods"]["nlm"]["scores"] == {}
    assert "skipped" in report["cases"][0]["methods"]["nlm"]["note"]
    assert "skipped" in (out / "results.md").read_text(encoding="utf-8")


def test_several_scans_get_a_mean_row_per_method(tmp_path, phantom_file):
    second = tmp_path / "second.nii.gz"
    second.write_bytes(phantom_file.read_bytes())
    code, report, out = _evaluate(tmp_path, phantom_file, second, "--degradation", "ct25", "--methods", "gaussian")
    assert code == 0 and len(report["cases"]) == 2
    first, other = (case["methods"]["gaussian"]["scores"]["psnr_window"] for case in report["cases"])
    assert report["mean"]["gaussian"]["cases"] == 2
    assert report["mean"]["gaussian"]["scores"]["psnr_window"] == pytest.approx((first + other) / 2)
    assert "mean of 2 cases" in (out / "results.md").read_text(encoding="utf-8")


def test_evaluate_takes_references_and_degradation_from_a_training_config(tmp_path, phantom_file):
    config = tmp_path / "config.yaml"
    config.write_text(
        f"name: x\ntask: denoise\nmodality: ct\ndegradation: {{kind: ct_low_dose, dose: [0.1, 0.5]}}\n"
        f"val_degradation: {{kind: ct_low_dose, dose: 0.5}}\ndata_root: {phantom_file.parent}\n"
        f"train_files: []\nval_files: [{phantom_file.name}]\n",
        encoding="utf-8",
    )
    code, report, _ = _evaluate(tmp_path, "--config", config, "--methods", "gaussian")
    assert code == 0
    assert report["degradation"] == {"kind": "ct_low_dose", "dose": 0.5} and report["modality"] == "ct"
    assert report["cases"][0]["source"] == str(phantom_file)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--degradation", "ct25", "--methods", "bspline"], "unknown methods"),
        (["--degradation", "{kind: blur}"], "kind"),
        (["--degradation", "ct25", "--modality", "pet", "--methods", "gaussian"], "degradation is for CT"),
        (["--degradation", "ct25", "--methods", "gaussian", "--crop", "8,40,40"], "at least 11"),
    ],
)
def test_evaluate_bad_requests_exit_2(tmp_path, phantom_file, capsys, args, message):
    assert main(["evaluate", str(phantom_file), *args, "-o", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_demo_end_to_end(tmp_path, tiny_checkpoints):
    report = demo(tmp_path, str(tiny_checkpoints["denoise"]), shape=(12, 48, 48), spacing=(7.0, 7.0, 2.5))
    assert list(report["cases"][0]["methods"]) == ["degraded", "gaussian", "curvature", "ours"]
    assert _finite_scores(report)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert {"phantom.png", "results.json", "results.md", "reference.nii.gz", "ours.nii.gz"} <= set(names)
    (baseline,) = [n for n in names if n.startswith("baseline_")]
    reference, ours = read_volume(tmp_path / "reference.nii.gz"), read_volume(tmp_path / baseline)
    assert ours.array.shape == reference.array.shape == (12, 48, 48) and ours.spacing == reference.spacing


def test_demo_without_a_shipped_model_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(registry, "SHIPPED_DIR", tmp_path / "no-models")
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 3
    assert "sdenhance train --config scripts/configs/ct-denoise.yaml" in capsys.readouterr().err


def _suite_file(tmp_path, phantom_file, families):
    path = tmp_path / "suite.yaml"
    suite = {"name": "tiny", "modality": "ct", "data_root": str(phantom_file.parent), "files": [phantom_file.name]}
    path.write_text(json.dumps(suite | {"crop": [12, 40, 40], "families": families}), encoding="utf-8")
    return path


def test_suite_scores_every_family_on_every_scan_and_checks_the_floor(tmp_path, phantom_file, tiny_checkpoints):
    families = {
        "white-40": {"kind": "ct_image_noise", "noise_hu": 40, "textures": ["white"]},
        "ramp-80": {"kind": "ct_image_noise", "noise_hu": 80, "textures": ["ramp"]},
    }
    out = tmp_path / "suite-out"
    args = ["evaluate", "--suite", str(_suite_file(tmp_path, phantom_file, families)), "-o", str(out)]
    assert main([*args, "--checkpoint", str(tiny_checkpoints["denoise"]), "--methods", "gaussian,ours"]) == 0
    rows = json.loads((out / "suite.json").read_text(encoding="utf-8"))["rows"]
    assert [r["family"] for r in rows] == ["white-40", "ramp-80"]
    for row in rows:
        per_family = json.loads((out / row["family"] / "results.json").read_text(encoding="utf-8"))
        scores = per_family["cases"][0]["methods"]
        assert row["best_classical"]["psnr"] == scores["gaussian"]["scores"]["psnr_window"]
        assert row["ours"]["ssim"] == scores["ours"]["scores"]["ssim_window"]
        expected = row["ours"]["psnr"] > max(row["degraded"]["psnr"], row["best_classical"]["psnr"]) and (
            row["ours"]["ssim"] > row["best_classical"]["ssim"]
        )
        assert meets_floor(row) is expected
    table = (out / "suite.md").read_text(encoding="utf-8")
    assert table.count("| torso |") == 2 and f"Floor met on {sum(meets_floor(r) for r in rows)} of 2 rows" in table
    assert all(f"| {r['noise']['reference']} / {r['noise']['input']} |" in table for r in rows)


def test_a_reference_with_noise_of_its_own_is_flagged_as_a_noisy_target():
    clean = np.full((12, 64, 64), 40.0, np.float32)  # soft tissue, with no texture of its own
    rng = np.random.default_rng(0)

    def case(reference_hu, added_hu):
        reference = Volume(clean + rng.normal(0, reference_hu, clean.shape).astype(np.float32), (1.0, 1.0, 2.0))
        noisy = reference.with_array(reference.array + rng.normal(0, added_hu, clean.shape).astype(np.float32))
        return Case("torso", reference, noisy, noisy)

    assert noise_record(case(2, 40), "ct")["noisy_reference"] is False
    grainy = noise_record(case(30, 20), "ct")
    # the input holds both noises (36 HU), the reference 30 of them
    assert grainy["noisy_reference"] is True and 0.7 < grainy["reference_to_input"] < 0.95
    assert grainy["reference"].startswith("noise ~") and grainy["reference"].endswith(" HU")


def test_suite_refuses_a_bad_family_before_running_anything(tmp_path, phantom_file):
    path = _suite_file(tmp_path, phantom_file, {"bad": {"kind": "ct_image_noise", "noise_hu": -3}})
    with pytest.raises(ValueError, match="noise_hu"):
        Suite.load(path)


def test_a_cropped_case_is_scaled_as_its_whole_scan_and_ct_padding_is_plain_air():
    """Evaluation and the trainer's validation share this preparation: a crop gets the normaliser of the whole
    degraded scan (as a whole-scan run would), and CT is clipped after degrading, so padding stays air."""
    from sdenhance.degrade import scored_denoising_case
    from sdenhance.evaluate import Setup, prepare_case
    from sdenhance.normalize import Normalizer

    body = torso_phantom((20, 48, 48), (2.0, 2.0, 3.0))
    mri = body.with_array(body.array.astype(np.float32) + 1024.0)
    setup = Setup({"kind": "mri_rician", "snr": 8}, "mri", ("ours",), crop=(12, 24, 24))
    case = prepare_case("mri", mri, setup, np.random.default_rng(0))
    noisy, _, whole = scored_denoising_case(mri, setup.spec, "mri", np.random.default_rng(0), setup.crop)
    assert case.normalizer == Normalizer.fit(whole.array, "mri") != Normalizer.fit(noisy.array, "mri")
    np.testing.assert_array_equal(case.model_input.array, noisy.array)
    padded = body.array.astype(np.float32)
    padded[:, :, :4] = -3024.0  # a GE scanner's value outside the reconstruction circle
    ct = body.with_array(padded)
    noisy, reference, whole = scored_denoising_case(
        ct, {"kind": "ct_image_noise", "noise_hu": 30}, "ct", np.random.default_rng(0), (12, 48, 48)
    )
    assert whole.array.shape == (12, 48, 48)  # only the crop's slices were degraded
    assert noisy.array.min() >= -1024.0 and reference.array.min() == -1024.0
