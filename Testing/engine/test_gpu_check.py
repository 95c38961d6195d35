"""scripts/gpu_check.py without a GPU: it refuses clearly, and its parity figures and table are right."""

import numpy as np
import pytest
import torch
from sde_script_helpers import script_module
from sdenhance.metrics import quality


@pytest.fixture(scope="module")
def gpu_check():
    with script_module("gpu_check") as module:
        yield module


def test_without_cuda_it_says_so_and_exits_2(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    captured = capsys.readouterr()
    assert "no CUDA GPU is visible to PyTorch" in captured.err and "Nothing was measured" in captured.err
    assert captured.out == ""  # no table of figures that were never measured


def test_parity_reports_the_largest_difference_and_the_psnr_change(gpu_check):
    rng = np.random.default_rng(0)
    reference = rng.normal(40, 100, (16, 32, 32)).astype(np.float32)
    cpu = (reference + rng.normal(0, 10, reference.shape)).astype(np.int16)
    cuda = cpu.copy()
    cuda[3, 4, 5] += 7
    cuda[0, 0, 0] -= 2

    figures = gpu_check.parity(cpu, cuda, reference)

    assert figures["max_abs_diff_hu"] == 7
    assert figures["psnr_cpu_db"] == pytest.approx(quality(reference, cpu.astype(np.float32), "ct")["psnr_window"])
    expected = quality(reference, cuda.astype(np.float32), "ct")["psnr_window"] - figures["psnr_cpu_db"]
    assert figures["psnr_diff_db"] == pytest.approx(expected) and figures["psnr_diff_db"] != 0
    assert gpu_check.parity(cpu, cpu, reference)["max_abs_diff_hu"] == 0


def test_the_table_is_markdown_with_one_row_per_check(gpu_check):
    table = gpu_check.markdown_table([("GPU", "NVIDIA H100"), ("end-to-end", "12.3 s, peak GPU memory 4.10 GB")])
    assert table.splitlines() == [
        "| check | result |",
        "|---|---|",
        "| GPU | NVIDIA H100 |",
        "| end-to-end | 12.3 s, peak GPU memory 4.10 GB |",
    ]
