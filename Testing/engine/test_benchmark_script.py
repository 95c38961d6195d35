"""scripts/benchmark.py runs end to end in --quick mode on a tiny checkpoint (not a timed test): every benchmark
reports the figures the README quotes, and the figures derived from others agree with them."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"


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
    "endtoend": {"shape_zyx", "input", "wall_s", "engine_s", "peak_rss_gb", "degraded", "enhanced", "target"},
    "reference": {"note", "ours", "reference_stand_in", "volumes"},
}
SCORES = {"psnr_window", "ssim_window", "psnr_full", "ssim_full"}


def test_quick_benchmark_writes_every_figure(tmp_path, tiny_checkpoints, monkeypatch):
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    benchmark = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "benchmark", benchmark)  # dataclasses look their module up there
    spec.loader.exec_module(benchmark)
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
