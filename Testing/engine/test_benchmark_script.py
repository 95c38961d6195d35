"""scripts/benchmark.py runs end to end in --quick mode on a tiny checkpoint (not a timed test): every benchmark
reports the figures the README quotes, and the figures derived from others agree with them."""

import json
import math

import numpy as np
import pytest
import torch
from sde_script_helpers import script_module
from sdenhance.backend import pick_backend
from sdenhance.pipeline import pick_precision


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield value


#: The figures each benchmark reports (besides its benchmark_s and loadavg_1min): what README's tables quote.
FIGURES = {
    "overhead": {"target", "note", "by_precision"},
    "throughput": {"units", "by_precision"},
    "sparse_dense": {
        "input",
        "degraded",
        "sparse",
        "dense",
        "speedup",
        "psnr_sparse_minus_dense_db",
        "sparse_seeds",
        "sparse_seed_range_db",
        "sparse_then_pass_at_t1",
        "target",
    },
    "steps": {"input", "degraded", "rows", "best"},
    "memory": {"steps", "runs", "growth_bytes_per_voxel", "growth_float32_volumes", "fixed_gb", "target"},
    "endtoend": {
        "shape_zyx",
        "input",
        "wall_s",
        "engine_s",
        "backend",
        "precision",
        "estimate_s",
        "calibration_s",
        "peak_rss_gb",
        "degraded",
        "enhanced",
        "target",
    },
    "reference": {"note", "ours", "reference_stand_in", "volumes"},
    "costmodel": {
        "input",
        "shape_zyx",
        "patch",
        "flops_per_window_pass",
        "flops_per_window_content",
        "network_s_per_window",
        "content_s_per_window",
        "network_gflops_per_s",
        "rows",
    },
    "levers": {"input", "input_seam_ratio", "runs", "previews", "target"},
}
SCORES = {"psnr_window", "ssim_window", "psnr_full", "ssim_full"}


@pytest.fixture(scope="module")
def benchmark_script():  # not "benchmark": pytest-benchmark's fixture has that name
    with script_module("benchmark") as module:
        yield module


def test_seam_ratio_sees_windows_that_meet_without_blending(benchmark_script):
    benchmark = benchmark_script
    rng = np.random.default_rng(0)
    smooth = rng.normal(0, 1, (40, 150, 150)).astype(np.float32)
    patch = (16, 64, 64)
    assert benchmark.seam_ratio(smooth, patch) == pytest.approx(1.0, abs=0.1)
    seamed = smooth.copy()
    for window in benchmark.window_slices(smooth.shape, patch, 0.0):
        seamed[window] += rng.normal(0, 1)  # each window off by its own offset, as if sampled apart
    assert benchmark.seam_ratio(seamed, patch) > 1.5


def test_quick_benchmark_writes_every_figure(tmp_path, tiny_checkpoints, benchmark_script):
    benchmark = benchmark_script
    out = tmp_path / "bench.json"
    argv = ["--quick", "--threads", "1", "--checkpoint", str(tiny_checkpoints["denoise"]), "--precisions", "fp32"]
    assert benchmark.main([*argv, "--dense-steps", "6", "--sweep-steps", "1", "2", "--out", str(out)]) == 0

    results = json.loads(out.read_text())
    assert set(benchmark.BENCHMARKS) == set(FIGURES)
    for name, figures in FIGURES.items():
        assert set(results[name]) == figures | {"benchmark_s", "loadavg_1min"}, name
    assert all(math.isfinite(v) for v in _numbers(results))
    assert results["overhead"]["by_precision"]["fp32"]["overhead"] > 0
    assert results["throughput"]["by_precision"]["fp32"]["voxels_per_s_per_step"] > 0
    sparse_dense = results["sparse_dense"]
    assert sparse_dense["dense"]["evaluations"] == 6
    assert sparse_dense["sparse_seeds"] == 3 and sparse_dense["sparse_seed_range_db"] > 0
    assert sparse_dense["sparse_then_pass_at_t1"]["psnr_window"] != sparse_dense["sparse"]["psnr_window"]
    for chain in ("sparse", "dense"):
        assert SCORES <= set(sparse_dense[chain]) and sparse_dense[chain]["seconds"] > 0
    difference = sparse_dense["sparse"]["psnr_window"] - sparse_dense["dense"]["psnr_window"]
    assert sparse_dense["psnr_sparse_minus_dense_db"] == pytest.approx(difference, abs=1e-3)
    steps = results["steps"]
    rows = [(r["steps"], r["heun"], r["overlap"]) for r in steps["rows"]]
    assert rows == [(1, False, 0.25), (2, False, 0.25), (2, True, 0.25), (2, False, 0.125)]  # tiny model: K = 2
    assert [r["evaluations"] for r in steps["rows"]] == [1, 2, 3, 2]  # Heun: two passes per transition
    assert steps["best"]["psnr_window"] == max(r["psnr_window"] for r in steps["rows"])
    assert SCORES <= set(results["endtoend"]["degraded"])
    assert all(
        run["peak_rss_gb"] > 0 and run["voxels"] == math.prod(run["shape_zyx"]) for run in results["memory"]["runs"]
    )
    assert results["endtoend"]["wall_s"] > 0 and "psnr_window" in results["endtoend"]["enhanced"]
    reference = results["reference"]["volumes"][0]
    assert reference["reference_tflops"] > reference["ours_tflops"] > 0
    ratio = reference["reference_tflops"] / reference["ours_tflops"]
    assert reference["ratio_reference_over_ours"] == pytest.approx(ratio, rel=0.05)

    cost = results["costmodel"]
    voxels, window = math.prod(cost["shape_zyx"]), math.prod(cost["patch"])
    rate = cost["flops_per_window_pass"] / cost["network_s_per_window"] / 1e9
    assert cost["network_gflops_per_s"] == pytest.approx(rate, rel=0.01)
    for row in cost["rows"]:
        assert row["evaluations"] == (2 * row["steps"] - 1 if row["heun"] else row["steps"])
        flops = row["kept_windows"] * (
            row["evaluations"] * cost["flops_per_window_pass"] + cost["flops_per_window_content"]
        )
        assert row["flops_per_voxel"] == pytest.approx(flops / voxels, abs=1)
        assert row["overlap_factor"] == pytest.approx(row["windows"] * window / voxels, abs=1e-3)
        assert row["air_share"] == pytest.approx(1 - row["kept_windows"] / row["windows"], abs=1e-4)
    by_overlap = {row["overlap"]: row for row in cost["rows"]}
    assert by_overlap[0.0]["overlap_factor"] < by_overlap[0.1]["overlap_factor"] < by_overlap[0.25]["overlap_factor"]

    levers = results["levers"]
    runs = [(r["steps"], r["overlap"], r["backend"]) for r in levers["runs"]]
    assert runs[:4] == [(2, 0.25, "torch"), (1, 0.25, "torch"), (1, 0.1, "torch"), (1, 0.0, "torch")]
    cpu = torch.device("cpu")
    assert runs[4] == (1, 0.1, pick_backend("auto", cpu, pick_precision("auto", cpu)))  # what auto picks here
    assert "vs_first" not in levers["runs"][0] and all(SCORES <= set(r["vs_first"]) for r in levers["runs"][1:])
    for run in levers["runs"]:
        assert run["estimate_error"] == pytest.approx(run["estimate_s"] / run["engine_s"] - 1, abs=2e-3)
    assert all(run["seam_ratio"] > 0 for run in levers["runs"]) and levers["input_seam_ratio"] > 0
    first, one_pass = levers["previews"]
    assert (first["steps"], one_pass["steps"]) == (2, 1)
    assert one_pass["slice_max_abs_diff_vs_run"] == 0  # with one pass the preview slice is the whole run's
    assert one_pass["preview"]["stop"] - one_pass["preview"]["start"] < 32  # a slab, not the whole phantom
