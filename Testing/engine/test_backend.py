import numpy as np
import pytest
import torch
from sdenhance.backend import converted_graph, pick_backend
from sdenhance.checkpoint import load_model
from sdenhance.errors import VolumeError
from sdenhance.io import read_volume
from sdenhance.pipeline import EnhanceOptions, enhance_volume
from sdenhance.registry import read_card

CPU = torch.device("cpu")


def test_auto_picks_openvino_only_for_float32_on_the_cpu(monkeypatch):
    monkeypatch.setattr("sdenhance.backend.openvino_installed", lambda: True)
    assert pick_backend("auto", CPU, "fp32") == "openvino"
    assert pick_backend("auto", CPU, "bf16") == "torch"
    assert pick_backend("auto", torch.device("cuda"), "fp32") == "torch"
    with pytest.raises(VolumeError, match="float32 on the CPU only"):
        pick_backend("openvino", CPU, "bf16")
    monkeypatch.setattr("sdenhance.backend.openvino_installed", lambda: False)
    assert pick_backend("auto", CPU, "fp32") == "torch"
    with pytest.raises(VolumeError, match=r"pip install 'sdenhance\[openvino\]'"):
        pick_backend("openvino", CPU, "fp32")


def test_openvino_enhances_as_pytorch_does_and_converts_a_model_once(tiny_checkpoints, ct_file, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("SDENHANCE_CACHE_DIR", str(tmp_path))
    card = read_card(tiny_checkpoints["denoise"])
    volume = read_volume(ct_file)
    runs = {
        backend: enhance_volume(volume, card, EnhanceOptions(seed=3, precision="fp32", backend=backend))
        for backend in ("torch", "openvino")
    }
    assert runs["openvino"].sampler.backend == "openvino"
    torch_out, openvino_out = (runs[b].volume.array for b in ("torch", "openvino"))
    assert np.abs(torch_out - volume.array).max() > 1.0  # the network changed the volume
    np.testing.assert_allclose(openvino_out, torch_out, atol=1e-3 * np.ptp(volume.array))
    graphs = sorted((tmp_path / "openvino").iterdir())
    assert [p.suffix for p in graphs] == [".bin", ".xml"]  # one graph, no partial files left
    model, _ = load_model(card)
    assert converted_graph(model) == graphs[1]  # the same weights reuse it
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert converted_graph(model) != graphs[1]  # changed weights are converted anew
