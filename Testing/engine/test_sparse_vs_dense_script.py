"""scripts/sparse_vs_dense.py trains both schedules side by side on a tiny config and reports their curves."""

import json

import pytest
from sde_script_helpers import script_module
from sdenhance.registry import read_card


@pytest.fixture(scope="module")
def script():
    with script_module("sparse_vs_dense") as module:
        yield module


def test_steps_to_a_psnr_are_interpolated_between_validations(script):
    curve = {"steps": [100, 200, 300], "seconds": [60.0, 120.0, 180.0], "psnr": [20.0, 24.0, 25.0]}
    assert script.reaching(curve, 22.0) == pytest.approx((150.0, 90.0))
    assert script.reaching(curve, 19.0) == (100.0, 60.0)
    assert script.reaching(curve, 26.0) is None


def test_both_schedules_train_from_scratch_and_are_compared(tmp_path, train_config_file, script):
    out = tmp_path / "cmp"
    args = ["--config", str(train_config_file), "--output", str(out), "--steps", "4", "--val-every", "2"]
    assert script.main([*args, "--dense-sampling-steps", "3"]) == 0
    sparse, dense = (read_card(out / s / f"tiny-{s}.safetensors").meta for s in ("sparse", "dense"))
    assert sparse["training"]["timesteps_drawn"] == "sparse" and sparse["sampling_steps"] is None
    assert dense["training"]["timesteps_drawn"] == "dense" and dense["sampling_steps"] == 3
    assert sparse["training"]["init_from"] is None and dense["training"]["steps"] == 4
    report = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert report["metric"] == "psnr_p995"  # the MRI headline, not a mean of every PSNR variant
    for curve in report["runs"].values():
        assert curve["steps"] == [2, 4] and 0 < curve["seconds"][0] < curve["seconds"][1]
    assert report["target_psnr"] == min(max(c["psnr"]) for c in report["runs"].values())
    reached = report["reached"]
    assert report["dense_over_sparse_steps"] == pytest.approx(
        reached["dense"]["steps"] / reached["sparse"]["steps"], rel=0.2
    )
    assert (out / "curves.png").stat().st_size > 10_000
