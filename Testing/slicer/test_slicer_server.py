"""The Lib's processing-server client (Qt-free, torch-free) against a real ``sdenhance serve`` on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from sde_slicer_helpers import MODULE_DIR, SLICER_CORE_MISSING, ijkToRAS

slicer = pytest.importorskip("slicer", reason=SLICER_CORE_MISSING)
pytest.importorskip("fastapi", reason="the server extra is not installed: pip install -e '.[server]'")

from SparseDiffusionEnhanceLib import (  # noqa: E402
    EnhanceLogic,
    EnhanceSettings,
    Phase,
    ServerConnection,
    WorkerError,
    pollUntilFinished,
    provenance,
    uncertaintyOf,
)

TOKEN = "slicer-test-token-0123456789"
TINY = "tiny-denoise-ct"


@pytest.fixture(scope="module")
def serverUrl(tinyCheckpoints, tmp_path_factory):
    from sdenhance.testing import serve_in_thread

    work = tmp_path_factory.mktemp("server-work")
    argv = ("--models", str(tinyCheckpoints["denoise"].parent), "--token", TOKEN, "--device", "cpu")
    with serve_in_thread(*argv, "--work-dir", str(work)) as url:
        yield url


@pytest.fixture
def remoteLogic(serverUrl, tmp_path):
    tempRoot = tmp_path / "remote-temp"
    tempRoot.mkdir()
    return EnhanceLogic(tempRoot=str(tempRoot), server=ServerConnection(serverUrl, TOKEN))


def test_a_server_run_gives_the_local_result_with_geometry_and_provenance(
    remoteLogic, logic, obliqueVolume, scene, tinyCheckpoints, serverUrl
):
    remote = remoteLogic.enhance(obliqueVolume, checkpoint=TINY, seed=4, samples=2)
    local = logic.enhance(obliqueVolume, checkpoint=str(tinyCheckpoints["denoise"]), seed=4, samples=2, device="cpu")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(remote), slicer.util.arrayFromVolume(local))
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(uncertaintyOf(remote)), slicer.util.arrayFromVolume(uncertaintyOf(local))
    )
    np.testing.assert_allclose(ijkToRAS(remote), ijkToRAS(obliqueVolume), atol=1e-9)
    attributes = provenance(remote)
    assert (attributes["checkpoint"], attributes["seed"], attributes["steps"]) == (TINY, "4", "2")
    assert attributes["device"] == "cpu" and attributes["engineVersion"] and attributes["server"] == serverUrl
    assert os.listdir(remoteLogic.tempRoot) == []
    # the token is nowhere in the scene
    scene.SetSaveToXMLString(1)
    scene.Commit()
    assert TOKEN not in scene.GetSceneXMLString() and serverUrl in scene.GetSceneXMLString()


def test_cancel_on_a_server_returns_at_once_and_leaves_the_scene_alone(remoteLogic, obliqueVolume, scene):
    large = slicer.util.addVolumeFromArray(np.random.default_rng(0).normal(0, 300, (24, 80, 96)).astype(np.int16))
    nodes = scene.GetNumberOfNodes()
    job = remoteLogic.startJob(large, EnhanceSettings(checkpoint=TINY, steps=400))
    while not (job.progress and job.progress.step):
        assert job.poll(), job.error and job.error.message
    job.cancel()
    assert job.phase == Phase.CANCELLING
    pollUntilFinished(job)
    assert job.phase == Phase.CANCELLED and job.error.kind == "cancelled"
    assert scene.GetNumberOfNodes() == nodes and os.listdir(remoteLogic.tempRoot) == []
    # the server's worker is free for the next run
    assert remoteLogic.enhance(obliqueVolume, checkpoint=TINY).GetImageData() is not None


def test_a_wrong_token_fails_the_job_with_the_servers_message(serverUrl, obliqueVolume, scene, tmp_path):
    logic = EnhanceLogic(tempRoot=str(tmp_path), server=ServerConnection(serverUrl, "wrong-token-0123456789"))
    nodes = scene.GetNumberOfNodes()
    with pytest.raises(WorkerError, match="refused the token") as caught:
        logic.enhance(obliqueVolume, checkpoint=TINY)
    assert caught.value.kind == "server" and scene.GetNumberOfNodes() == nodes
    assert "wrong-token" not in repr(logic.server)


def test_enhance_files_on_a_server(remoteLogic, tmp_path, tinyCheckpoints):
    from sdenhance.io import Volume, write_volume

    rng = np.random.default_rng(1)
    scan = Volume((rng.normal(0, 300, (8, 16, 16))).astype(np.int16), (1.0, 1.0, 2.0))
    path = write_volume(scan, tmp_path / "scan.nii.gz")
    written = remoteLogic.enhanceFiles([path], tmp_path / "out", checkpoint=TINY)
    assert [p.name for p in written] == ["scan_enhanced_denoise.nii.gz"]


def test_the_client_side_never_imports_torch_or_qt():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import sdenhance.client, SparseDiffusionEnhanceLib.remote; "
        "print(sorted({'torch', 'monai', 'qt', 'PythonQt'} & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
