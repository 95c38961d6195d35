"""The worker runner and the enhance API with the real engine on tiny random-weight checkpoints."""

from __future__ import annotations

import os
import stat
import sys
import time

import numpy as np
import pytest
from sde_slicer_helpers import SLICER_CORE_MISSING, ijkToRAS, voxelCornersRAS

slicer = pytest.importorskip("slicer", reason=SLICER_CORE_MISSING)
psutil = pytest.importorskip("psutil")

from SparseDiffusionEnhanceLib import (  # noqa: E402
    Axis,
    EnhanceSettings,
    Phase,
    Progress,
    WorkerError,
    WorkerProcess,
    formatDuration,
    parseEvent,
    pollUntilFinished,
    provenance,
    uncertaintyOf,
)
from SparseDiffusionEnhanceLib.worker import LOG_TAIL_LINES  # noqa: E402


def test_progress_lines_are_told_apart_from_other_output():
    assert parseEvent('{"event": "step", "step": 1, "total": 4}') == {"event": "step", "step": 1, "total": 4}
    assert parseEvent("UserWarning: something") is None
    assert parseEvent('{"not": "an event"}') is None
    assert parseEvent("{broken json") is None


def test_progress_text_gives_steps_and_time_left():
    assert Progress().describe() == "Loading the model…"
    assert (
        Progress(step=3, total=10, remaining=85, device="cpu").describe() == "Step 3 of 10, about 1 min 25 s left (cpu)"
    )
    assert formatDuration(7300) == "2 h 01 min"


def test_settings_become_worker_arguments():
    settings = EnhanceSettings(task="sr", checkpoint="ct-sr", factor=4, axis="x", steps=5, patch=32, device="cpu")
    args = settings.workerArguments("in.nrrd", "out.nrrd")
    assert args[:6] == ["-m", "sdenhance", "enhance", "in.nrrd", "-o", "out.nrrd"]
    for option, value in [("--task", "sr"), ("--factor", "4"), ("--axis", "x"), ("--steps", "5"), ("--patch", "32")]:
        assert args[args.index(option) + 1] == value
    assert settings.workerEnvironment() == {"CUDA_VISIBLE_DEVICES": "-1"}
    defaults = EnhanceSettings().workerArguments("in.nrrd", "out.nrrd")
    assert "--steps" not in defaults and "--checkpoint" not in defaults and "--factor" not in defaults
    with pytest.raises(ValueError, match="x2 and x4"):
        EnhanceSettings(factor=3)


def test_a_checkpoint_is_checked_against_task_and_factor(tinyCheckpoints, tmp_path):
    sr = str(tinyCheckpoints["sr"])  # x2 along z
    assert EnhanceSettings(task="sr", checkpoint=sr, factor=2).checkpointProblem() == ""
    assert EnhanceSettings(task="sr", checkpoint=sr).checkpointProblem() == ""  # factor 0: the model's own
    assert "up-samples x2, not x4" in EnhanceSettings(task="sr", checkpoint=sr, factor=4).checkpointProblem()
    assert "is a sr model, not denoise" in EnhanceSettings(task="denoise", checkpoint=sr).checkpointProblem()
    assert "not found" in EnhanceSettings(checkpoint=tmp_path / "missing.safetensors").checkpointProblem()


def test_settings_take_the_factor_and_axis_the_engine_used():
    asked = EnhanceSettings(task="sr", axis="y")
    assert asked.describe() == "super-resolution"
    used = asked.asRun({"factor": 4, "axis": "y", "checkpoint": "ct-sr4"})
    assert (used.factor, used.axis) == (4, Axis.Y) and used.describe() == "super-resolution x4 y"
    assert EnhanceSettings(task="denoise").asRun({"factor": None, "axis": None}) == EnhanceSettings(task="denoise")


def test_several_samples_ask_for_an_uncertainty_file_beside_the_result():
    args = EnhanceSettings(samples=3).workerArguments("in.nrrd", "x/scan_enhanced.nii.gz")
    assert args[args.index("--samples") + 1] == "3"
    assert args[args.index("--uncertainty") + 1] == "x/scan_enhanced_uncertainty.nii.gz"
    assert "--uncertainty" not in EnhanceSettings(samples=1).workerArguments("in.nrrd", "out.nrrd")
    with pytest.raises(ValueError, match="between 1 and 8"):
        EnhanceSettings(samples=9)


def test_enhance_runs_the_engine_and_imports_the_result(logic, obliqueVolume, scene, tinyCheckpoints):
    seen = []
    output = logic.enhance(
        obliqueVolume,
        task="denoise",
        checkpoint=str(tinyCheckpoints["denoise"]),
        device="cpu",
        seed=3,
        onChange=lambda job: seen.append((job.phase, job.progress.step if job.progress else None)),
    )
    assert (Phase.RUNNING, 2) in seen and seen[-1][0] == Phase.DONE
    assert Phase.IMPORTING in [phase for phase, _ in seen]
    assert output.GetName() == "CT oblique enhanced (denoise)"
    np.testing.assert_allclose(ijkToRAS(output), ijkToRAS(obliqueVolume), atol=1e-9)
    enhanced = slicer.util.arrayFromVolume(output)
    assert enhanced.shape == slicer.util.arrayFromVolume(obliqueVolume).shape
    assert not np.array_equal(enhanced, slicer.util.arrayFromVolume(obliqueVolume))  # the network did run
    attributes = provenance(output)
    assert attributes["checkpoint"] == "tiny-denoise-ct" and attributes["seed"] == "3"
    assert attributes["device"] == "cpu" and attributes["steps"] == "2" and float(attributes["seconds"]) > 0
    assert os.listdir(logic.tempRoot) == []  # temporary files removed


def test_samples_bring_back_an_uncertainty_volume_on_the_result_grid(logic, obliqueVolume, scene, tinyCheckpoints):
    output = logic.enhance(
        obliqueVolume, task="sr", checkpoint=str(tinyCheckpoints["sr"]), factor=2, device="cpu", samples=2
    )
    spread = uncertaintyOf(output)
    assert spread is not None and spread.GetName() == f"{output.GetName()} uncertainty"
    assert spread.GetImageData().GetDimensions() == output.GetImageData().GetDimensions()
    np.testing.assert_allclose(ijkToRAS(spread), ijkToRAS(output), atol=1e-9)
    values = slicer.util.arrayFromVolume(spread)
    assert values.min() >= 0 and values.max() > 0
    assert provenance(output)["samples"] == "2"
    shNode = scene.GetSubjectHierarchyNode()
    parent = shNode.GetItemParent(shNode.GetItemByDataNode(output))
    assert shNode.GetItemByDataNode(spread) and shNode.GetItemParent(shNode.GetItemByDataNode(spread)) == parent
    assert os.listdir(logic.tempRoot) == []

    # a rerun into the same output refreshes its uncertainty volume instead of adding another
    nodes = scene.GetNumberOfNodes()
    logic.enhance(
        obliqueVolume, "sr", str(tinyCheckpoints["sr"]), outputNode=output, factor=2, device="cpu", samples=2, seed=1
    )
    assert uncertaintyOf(output).GetID() == spread.GetID() and scene.GetNumberOfNodes() == nodes


def test_super_resolution_result_lands_on_the_fine_grid(logic, obliqueVolume, tinyCheckpoints):
    # no factor given: the checkpoint's own (x2), as the engine reports it back
    output = logic.enhance(obliqueVolume, task="sr", checkpoint=str(tinyCheckpoints["sr"]), axis="z", device="cpu")
    assert output.GetImageData().GetDimensions() == (12, 14, 20)
    np.testing.assert_allclose(voxelCornersRAS(output), voxelCornersRAS(obliqueVolume), atol=1e-6)
    assert provenance(output)["factor"] == "2"
    assert output.GetName() == "CT oblique enhanced (super-resolution x2 z)"
    assert os.listdir(logic.tempRoot) == []


def test_a_bad_checkpoint_fails_clearly_and_leaves_the_scene_alone(logic, obliqueVolume, scene, tmp_path):
    nodesBefore = scene.GetNumberOfNodes()
    with pytest.raises(WorkerError) as failure:
        logic.enhance(obliqueVolume, checkpoint=str(tmp_path / "missing.safetensors"), device="cpu")
    assert failure.value.kind == "checkpoint"
    assert "not found" in failure.value.message and "Choose another checkpoint" in failure.value.userMessage()
    assert scene.GetNumberOfNodes() == nodesBefore
    assert os.listdir(logic.tempRoot) == []


@pytest.fixture
def launcher(tmp_path):
    """Like PythonSlicer, a launcher that starts Python as its child instead of replacing itself with it."""
    path = tmp_path / "launcher.sh"
    path.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def processTree(worker, timeout=20.0) -> list:
    """The worker's launcher and what it started, once the launcher has a child."""
    launcherProcess = psutil.Process(worker.pid)
    deadline = time.monotonic() + timeout
    while not launcherProcess.children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return [launcherProcess, *launcherProcess.children(recursive=True)]


def alive(processes) -> list:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.skipif(sys.platform == "win32", reason="the stand-in launcher is a shell script, the input a FIFO")
def test_cancel_returns_at_once_and_polling_sees_the_whole_tree_end(tmp_path, launcher):
    # a FIFO nobody writes to: the worker blocks reading it, so only Cancel can end it
    blocked = tmp_path / "never-written.nrrd"
    os.mkfifo(blocked)
    worker = WorkerProcess(EnhanceSettings().workerArguments(blocked, tmp_path / "out.nrrd"), python=launcher)
    worker.start()
    tree = processTree(worker)
    try:
        assert len(tree) >= 2, "the worker did not start under the launcher"
        asked = time.monotonic()
        worker.cancel()
        assert time.monotonic() - asked < 1.0  # the GUI thread is not held while the worker exits
        assert worker.cancelling
        waitStarted = time.monotonic()
        while worker.poll():
            assert time.monotonic() - waitStarted < 30, "the worker did not exit after SIGTERM"
            time.sleep(0.05)
        assert alive(tree) == []
        assert worker.error.kind == "cancelled" and not worker.cancelling
    finally:
        for process in alive(tree):  # never leave a blocked worker behind, even when the test fails
            process.kill()


@pytest.mark.skipif(sys.platform == "win32", reason="the stand-in worker is a shell script")
def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path, monkeypatch):
    import SparseDiffusionEnhanceLib.worker as workerModule

    monkeypatch.setattr(workerModule, "TERMINATE_GRACE_S", 0.5)
    stubborn = tmp_path / "stubborn.sh"
    stubborn.write_text('#!/bin/sh\ntrap "" TERM\nsleep 600\n')  # sleep inherits the ignored SIGTERM
    stubborn.chmod(stubborn.stat().st_mode | stat.S_IEXEC)
    worker = WorkerProcess([], python=str(stubborn))
    worker.start()
    tree = processTree(worker)
    try:
        worker.cancel()
        time.sleep(0.3)
        assert worker.poll() and alive(tree), "SIGTERM should have been ignored"
        deadline = time.monotonic() + 10
        while worker.poll():
            assert time.monotonic() < deadline, "the worker was not killed after the grace period"
            time.sleep(0.05)
        assert alive(tree) == [] and worker.error.kind == "cancelled"
    finally:
        for process in alive(tree):
            process.kill()


def test_a_cancelled_job_leaves_the_scene_and_no_files(logic, obliqueVolume, scene, tinyCheckpoints):
    nodesBefore = scene.GetNumberOfNodes()
    job = logic.enhance(obliqueVolume, checkpoint=str(tinyCheckpoints["denoise"]), device="cpu", wait=False)
    assert job.phase == Phase.RUNNING and job.folder.is_dir()

    job.cancel()
    assert job.phase == Phase.CANCELLING and job.folder.is_dir()  # files go once the worker has exited
    pollUntilFinished(job, interval=0.05)

    assert job.phase == Phase.CANCELLED and job.error.kind == "cancelled"
    assert not psutil.pid_exists(job.worker.pid) or psutil.Process(job.worker.pid).status() == psutil.STATUS_ZOMBIE
    assert os.listdir(logic.tempRoot) == []
    assert scene.GetNumberOfNodes() == nodesBefore


def test_enhance_files_writes_each_result_and_reports_failures(logic, tmp_path, obliqueVolume, tinyCheckpoints):
    from SparseDiffusionEnhanceLib import exportVolume

    good = exportVolume(obliqueVolume, tmp_path, "scan.nrrd")
    missing = tmp_path / "missing.nii.gz"
    events = []
    with pytest.raises(RuntimeError, match="1 of 2 files failed") as failure:
        logic.enhanceFiles(
            [missing, good],
            tmp_path / "out",
            checkpoint=str(tinyCheckpoints["denoise"]),
            device="cpu",
            onProgress=lambda path, event: events.append((path.name, event["event"])),
        )
    assert "missing.nii.gz" in str(failure.value)
    assert (tmp_path / "out" / "scan_enhanced_denoise.nrrd").is_file()
    assert ("scan.nrrd", "done") in events and ("missing.nii.gz", "error") in events


def test_enhance_files_with_samples_writes_uncertainty_beside_each_result(
    logic, tmp_path, obliqueVolume, tinyCheckpoints
):
    from SparseDiffusionEnhanceLib import exportVolume

    scan = exportVolume(obliqueVolume, tmp_path, "scan.nrrd")
    written = logic.enhanceFiles([scan], tmp_path / "out", checkpoint=str(tinyCheckpoints["denoise"]), samples=2)
    assert written == [tmp_path / "out" / "scan_enhanced_denoise.nrrd"]
    assert (tmp_path / "out" / "scan_enhanced_denoise_uncertainty.nrrd").is_file()


@pytest.mark.parametrize("removed", ["input", "output"])
def test_removing_a_volume_during_a_run_fails_the_job_and_cleans_up(
    logic, obliqueVolume, scene, tinyCheckpoints, removed
):
    output = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "chosen output")
    nodesBefore = scene.GetNumberOfNodes()
    job = logic.enhance(
        obliqueVolume, checkpoint=str(tinyCheckpoints["denoise"]), outputNode=output, device="cpu", wait=False
    )
    worker = job.worker
    assert job.phase == Phase.RUNNING

    scene.RemoveNode(obliqueVolume if removed == "input" else output)
    pollUntilFinished(job, interval=0.05)

    assert job.phase == Phase.FAILED and job.error.kind == "scene"
    name = "CT oblique" if removed == "input" else "chosen output"
    assert f"The {removed} volume '{name}' was removed from the scene" in job.error.message
    assert not worker.cancelling and worker.returncode is not None  # the worker was stopped, not left running
    assert os.listdir(logic.tempRoot) == []
    assert scene.GetNumberOfNodes() == nodesBefore - 1


def test_an_unexpected_error_while_importing_fails_the_job_and_cleans_up(
    logic, obliqueVolume, scene, tinyCheckpoints, monkeypatch
):
    import SparseDiffusionEnhanceLib.logic as logicModule

    def broken(*args):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(logicModule, "importResult", broken)
    nodesBefore = scene.GetNumberOfNodes()
    job = logic.enhance(obliqueVolume, checkpoint=str(tinyCheckpoints["denoise"]), device="cpu", wait=False)
    pollUntilFinished(job, interval=0.05)

    assert job.phase == Phase.FAILED and "Could not load the result: unexpected" in job.error.message
    assert os.listdir(logic.tempRoot) == []
    assert scene.GetNumberOfNodes() == nodesBefore  # the node made for the result was removed again


def test_a_reused_output_loses_the_previous_runs_attributes(logic, obliqueVolume, scene, tinyCheckpoints):
    output = logic.enhance(
        obliqueVolume, task="sr", checkpoint=str(tinyCheckpoints["sr"]), factor=2, device="cpu", samples=2
    )
    assert uncertaintyOf(output) is not None and provenance(output)["factor"] == "2"

    logic.enhance(obliqueVolume, checkpoint=str(tinyCheckpoints["denoise"]), outputNode=output, device="cpu")

    attributes = provenance(output)
    assert attributes["task"] == "denoise" and attributes["samples"] == "1"
    assert "factor" not in attributes and "axis" not in attributes
    assert uncertaintyOf(output) is None
    assert output.GetImageData().GetDimensions() == obliqueVolume.GetImageData().GetDimensions()


def test_inside_slicer_the_worker_never_falls_back_to_the_application(monkeypatch, tmp_path):
    from SparseDiffusionEnhanceLib import defaultPythonExecutable

    assert defaultPythonExecutable() == sys.executable  # slicer-core: no application, this interpreter
    monkeypatch.setattr(slicer, "app", object(), raising=False)  # inside Slicer, sys.executable is Slicer
    monkeypatch.setenv("PATH", str(tmp_path))  # no PythonSlicer on it
    with pytest.raises(RuntimeError, match="PythonSlicer.*is not on PATH"):
        defaultPythonExecutable()
    pythonSlicer = tmp_path / "PythonSlicer"
    pythonSlicer.write_text("#!/bin/sh\n")
    pythonSlicer.chmod(0o755)
    assert defaultPythonExecutable() == str(pythonSlicer)


def test_worker_output_reaches_the_live_log(logic, obliqueVolume, scene, tmp_path):
    lines = []
    job = logic.startJob(
        obliqueVolume,
        EnhanceSettings(checkpoint=str(tmp_path / "missing.safetensors"), device="cpu"),
        onOutput=lines.append,
    )
    pollUntilFinished(job, interval=0.05)
    assert job.phase == Phase.FAILED
    assert any(line.startswith("error:") and "not found" in line for line in lines)  # as the worker printed it
    assert not any(line.startswith('{"event"') for line in lines)  # progress events stay out of the log
    assert job.error.logTail.splitlines() == lines[-LOG_TAIL_LINES:]


def test_the_gpu_choice_reaches_the_worker_and_a_cpu_run_hides_cuda():
    assert EnhanceSettings(device="cuda", gpu=2).workerEnvironment() == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "2",
    }
    assert EnhanceSettings(device="cpu", gpu=2).workerEnvironment() == {"CUDA_VISIBLE_DEVICES": "-1"}
    assert EnhanceSettings(device="auto").workerEnvironment() == {}
    with pytest.raises(ValueError, match="must not be negative"):
        EnhanceSettings(gpu=-1)


def test_gpus_are_listed_from_nvidia_smi_without_torch():
    from SparseDiffusionEnhanceLib import listGpus, parseGpuList

    assert parseGpuList("0, NVIDIA RTX A6000\n1, NVIDIA GeForce RTX 4090\n") == [
        "NVIDIA RTX A6000",
        "NVIDIA GeForce RTX 4090",
    ]
    assert parseGpuList("") == []
    gpus = listGpus()  # [] on a machine without nvidia-smi
    assert isinstance(gpus, list) and all(isinstance(name, str) and name for name in gpus)


def test_engine_warnings_reach_the_log_and_stay_with_the_result(logic, obliqueVolume, scene, tinyCheckpoints):
    """The tiny model was trained for K = 2: sampling with 3 steps makes the engine warn, and the warning must not
    be lost on the way into the scene."""
    lines = []
    job = logic.startJob(
        obliqueVolume,
        EnhanceSettings(checkpoint=str(tinyCheckpoints["denoise"]), device="cpu", steps=3),
        onOutput=lines.append,
    )
    pollUntilFinished(job, interval=0.05)
    assert job.phase == Phase.DONE
    assert any(line.startswith("Warning: --steps 3 evaluates 'tiny-denoise-ct'") for line in lines)
    assert "never trained on" in provenance(job.outputNode)["warnings"]
    quiet = logic.enhance(obliqueVolume, task="denoise", checkpoint=str(tinyCheckpoints["denoise"]), device="cpu")
    assert "warnings" not in provenance(quiet)  # a run without doubts records none
