"""``sdenhance batch``: a list split across torchrun's ranks (2 CPU processes, gloo), resumed by running it again."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from sdenhance.cli import main
from sdenhance.errors import EXIT_INPUT, EXIT_TERMINATED
from sdenhance.io import Volume, read_volume, write_volume


def scan(path, seed, shape=(10, 24, 20)):
    rng = np.random.default_rng(seed)
    array = (rng.normal(40, 30, shape) + np.linspace(-900, 300, shape[2])).astype(np.int16)
    return write_volume(Volume(array, (0.75, 0.8, 2.5), (1.0, 2.0, 3.0)), path)


@pytest.fixture
def scans(tmp_path):
    """Four good scans and, third in the list, a file that is no image; the list names them relative to itself."""
    data = tmp_path / "data"
    data.mkdir()
    for i, name in enumerate(["a.nrrd", "b.nii.gz", "d.mha", "e.nrrd"]):
        scan(data / name, i)
    (data / "c.nrrd").write_bytes(b"not an image")
    listing = tmp_path / "list.txt"
    listing.write_text("# scans\ndata/a.nrrd\ndata/b.nii.gz\ndata/c.nrrd\n\ndata/d.mha\ndata/e.nrrd\n")
    return listing


def torchrun(listing, out_dir, checkpoint, *extra, processes=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command += ["-m", "sdenhance", "batch", str(listing), str(out_dir), "--checkpoint", str(checkpoint)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*command, "--device", "cpu", "--seed", "3", *extra], capture_output=True, text=True, env=env)


def summary(out_dir):
    return json.loads((out_dir / "batch-summary.json").read_text(encoding="utf-8"))


def test_two_processes_share_the_list_report_the_bad_file_and_resume(scans, tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    first = torchrun(scans, out, tiny_checkpoints["denoise"])
    # the ranks exit 2 (an input failed) and torchrun reports that as its own exit code 1; a rank still tearing
    # down when the first one has exited is SIGTERMed by torchrun, so on a loaded machine only the first shows 2
    assert first.returncode == 1 and f"exitcode  : {EXIT_INPUT}" in first.stderr, first.stderr
    assert "exitcode  : 1 " not in first.stderr  # no rank crashed
    assert "batch: 5 scans on 2 processes: 4 done, 0 skipped (complete output already there), 1 failed" in first.stdout
    assert f"failed: {scans.parent / 'data' / 'c.nrrd'}: cannot read" in first.stdout
    scans_run = summary(out)["scans"]
    assert [r["status"] for r in scans_run] == ["done", "done", "failed", "done", "done"]
    assert [r["rank"] for r in scans_run] == [0, 1, 0, 1, 0]  # every second scan on each rank
    assert scans_run[2]["kind"] == "input"
    assert sorted(p.name for p in out.iterdir()) == ["a.nrrd", "b.nii.gz", "batch-summary.json", "d.mha", "e.nrrd"]
    # each result is the one `enhance` gives with the same options
    local = tmp_path / "local.nii.gz"
    argv = ["enhance", str(scans.parent / "data" / "b.nii.gz"), "-o", str(local), "--device", "cpu", "--seed", "3"]
    assert main([*argv, "--checkpoint", str(tiny_checkpoints["denoise"]), "--progress", "none"]) == 0
    np.testing.assert_array_equal(read_volume(out / "b.nii.gz").array, read_volume(local).array)

    # a damaged and a missing output are redone; the complete ones are skipped
    (out / "a.nrrd").write_bytes((out / "a.nrrd").read_bytes()[:300])
    (out / "e.nrrd").unlink()
    again = torchrun(scans, out, tiny_checkpoints["denoise"])
    assert "5 scans on 2 processes: 2 done, 2 skipped (complete output already there), 1 failed" in again.stdout
    assert [r["status"] for r in summary(out)["scans"]] == ["done", "skipped", "failed", "skipped", "done"]
    assert read_volume(out / "a.nrrd").array.shape == (10, 24, 20)


def test_one_process_without_torchrun_does_the_whole_list(scans, tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["batch", str(scans), str(out), "--checkpoint", str(tiny_checkpoints["denoise"]), "--device", "cpu"]
    assert main(argv) == EXIT_INPUT
    assert "5 scans on 1 process: 4 done, 0 skipped" in capsys.readouterr().out
    assert {r["rank"] for r in summary(out)["scans"]} == {0}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-o", "x.nrrd"], "batch sets -o itself"),
        (["--uncertainty=u.nrrd"], "batch sets --uncertainty itself"),
        (["--steps", "two"], "invalid enhance option: argument --steps: invalid int value: 'two'"),
    ],
)
def test_options_are_checked_before_any_work(scans, tiny_checkpoints, tmp_path, capsys, extra, message):
    argv = ["batch", str(scans), str(tmp_path / "out"), "--checkpoint", str(tiny_checkpoints["denoise"]), *extra]
    assert main(argv) == EXIT_INPUT
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_two_inputs_that_would_write_one_output_are_refused(tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("one/scan.nrrd\ntwo/scan.nrrd\n")
    assert main(["batch", str(listing), str(tmp_path / "out")]) == EXIT_INPUT
    assert "would both be written to" in capsys.readouterr().err


def test_a_cancelled_run_leaves_no_partial_output_and_resumes(tmp_path, tiny_checkpoints):
    data = tmp_path / "data"
    data.mkdir()
    scan(data / "small.nrrd", 0)
    scan(data / "large.nrrd", 1, (16, 48, 48))  # with many steps, long enough to be stopped in the middle
    scan(data / "last.nrrd", 2)
    listing = tmp_path / "list.txt"
    listing.write_text("data/small.nrrd\ndata/large.nrrd\ndata/last.nrrd\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sdenhance", "batch", str(listing), str(out), "--device", "cpu"]
    command += ["--checkpoint", str(tiny_checkpoints["denoise"]), "--steps", "40"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "small.nrrd").exists():
        assert time.monotonic() < deadline and run.poll() is None, run.communicate()
        time.sleep(0.05)
    time.sleep(1.0)  # into the large scan
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == EXIT_TERMINATED, err
    assert sorted(p.name for p in out.iterdir()) == ["small.nrrd"]  # no partial file, no summary
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "3 scans on 1 process: 2 done, 1 skipped" in resumed.stdout
