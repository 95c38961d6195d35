"""``sdenhance serve`` and its client against a real server on 127.0.0.1 (uvicorn in a thread or a process)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed: pip install -e '.[server]'")
import requests  # noqa: E402
from sdenhance.cli import build_parser, main  # noqa: E402
from sdenhance.client import Client, ServerError  # noqa: E402
from sdenhance.errors import EXIT_CHECKPOINT, EXIT_INPUT, EXIT_SERVER, InputError  # noqa: E402
from sdenhance.io import Volume, read_volume, write_volume  # noqa: E402
from sdenhance.server import prepare  # noqa: E402
from sdenhance.testing import serve_in_thread  # noqa: E402

TOKEN = "test-token-0123456789abcdef"
TINY = "tiny-denoise-ct"


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("server-work")


@pytest.fixture(scope="module")
def url(tiny_checkpoints, work_dir):
    argv = server_options(tiny_checkpoints, work_dir, "--max-upload-mb", "1", "--max-voxels", "200000")
    with serve_in_thread(*argv) as address:
        yield address


def server_options(tiny_checkpoints, work_dir: Path, *extra: str) -> tuple[str, ...]:
    """`serve` options for a CPU server of the tiny models with the test token, working in ``work_dir``."""
    models = str(tiny_checkpoints["denoise"].parent)
    return ("--models", models, "--token", TOKEN, "--device", "cpu", "--work-dir", str(work_dir), *extra)


def job_folders(work_dir: Path) -> list[Path]:
    """The job folders the server has now (each server run makes one root folder under work_dir)."""
    return [job for root in work_dir.iterdir() for job in root.iterdir()]


def ct_volume(seed: int, shape=(10, 24, 20)) -> Volume:
    rng = np.random.default_rng(seed)
    array = (rng.normal(40, 30, shape) + np.linspace(-900, 300, shape[2])).astype(np.int16)
    return Volume(array, (0.75, 0.8, 2.5), (12.0, -7.5, 100.0), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


def assert_same_volume(a: Path, b: Path) -> None:
    va, vb = read_volume(a), read_volume(b)
    assert va.array.dtype == vb.array.dtype
    np.testing.assert_array_equal(va.array, vb.array)
    assert (va.spacing, va.origin, va.direction) == (vb.spacing, vb.origin, vb.direction)


def wait_for(predicate, timeout=60.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval)


# --- security ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}])
def test_a_missing_or_wrong_token_is_refused(url, ct_file, work_dir, headers):
    for response in (
        requests.get(f"{url}/v1/info", headers=headers, timeout=10),
        requests.post(f"{url}/v1/jobs", headers=headers, data=ct_file.read_bytes(), timeout=10),
    ):
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["kind"] == "server" and error["exit_code"] == EXIT_SERVER
        assert "refused the token" in error["message"]
    assert job_folders(work_dir) == []


def test_the_client_reports_a_wrong_token_with_the_servers_message(url):
    with pytest.raises(ServerError, match="refused the token") as caught:
        Client(url, "wrong-token-0123456789").info()
    assert caught.value.exit_code == EXIT_SERVER


def test_a_url_without_its_scheme_is_refused_before_any_request():
    with pytest.raises(ServerError, match="must start with http:// or https://") as caught:
        Client("gpu-server:8765", TOKEN)
    assert caught.value.exit_code == EXIT_INPUT


def serve_args(*argv):
    return build_parser().parse_args(["serve", "--port", "0", *argv])


def test_no_token_is_refused_off_loopback_and_one_is_made_on_it(monkeypatch):
    monkeypatch.delenv("SDENHANCE_TOKEN", raising=False)
    never = pytest.fail  # the engine is never reached: the refusal comes before the socket is bound
    with pytest.raises(InputError, match="refusing to listen on 0.0.0.0 without a token"):
        prepare(serve_args("--host", "0.0.0.0", "--device", "cpu"), never, never)
    with pytest.raises(InputError, match="token is too short"):
        prepare(serve_args("--token", "short", "--device", "cpu"), never, never)
    prepared = prepare(serve_args("--device", "cpu"), never, never)
    prepared.sock.close()
    assert prepared.generated and len(prepared.token) >= 32


def test_oversize_uploads_are_refused_with_a_message(url, tmp_path, work_dir):
    big = tmp_path / "big.nrrd"
    write_volume(ct_volume(0, (40, 120, 120)), big)  # 1.1 MB uncompressed, over the 1 MB limit
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = requests.post(
        f"{url}/v1/jobs", params={"input_format": "nrrd"}, data=big.read_bytes(), headers=headers, timeout=30
    )
    assert response.status_code == 413
    assert "larger than this server accepts (1,048,576 bytes)" in response.json()["error"]["message"]
    with pytest.raises(ServerError, match="more than the server accepts") as caught:  # refused before uploading
        Client(url, TOKEN).submit(big, {})
    assert caught.value.exit_code == EXIT_INPUT

    many = write_volume(
        ct_volume(0, (20, 100, 101)).with_array(np.zeros((20, 100, 101), np.uint8)), tmp_path / "m.nii.gz"
    )
    response = requests.post(
        f"{url}/v1/jobs", params={"input_format": "nii.gz"}, data=many.read_bytes(), headers=headers, timeout=30
    )
    assert response.status_code == 400
    assert (
        "the upload has 202,000 voxels, more than this server accepts (200,000)" in response.json()["error"]["message"]
    )
    assert job_folders(work_dir) == []


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x01garbage" * 100, "the upload is not a readable nrrd file"),
        (
            b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: /etc/passwd\n\n",
            "separate data file",
        ),
        (b"", "the upload is empty"),
    ],
)
def test_corrupt_uploads_are_refused_with_a_message(url, work_dir, content, message):
    response = requests.post(
        f"{url}/v1/jobs",
        params={"input_format": "nrrd"},
        data=content,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"]["kind"] == "input"
    assert message in response.json()["error"]["message"]
    assert job_folders(work_dir) == []


@pytest.mark.parametrize(
    "options, kind, message",
    [
        ({"checkpoint": "/etc/passwd"}, "checkpoint", "this server has no checkpoint '/etc/passwd'; it offers:"),
        ({"output": "x.nrrd"}, "input", "unknown option output"),
        ({"steps": "two"}, "input", "invalid enhance option: argument --steps: invalid int value: 'two'"),
        ({"heun": "yes"}, "input", "option heun is true or false"),
    ],
)
def test_requests_cannot_name_paths_or_bad_options(url, ct_file, work_dir, options, kind, message):
    response = requests.post(
        f"{url}/v1/jobs",
        params={"input_format": "nrrd", **options},
        data=ct_file.read_bytes(),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"]["kind"] == kind and message in response.json()["error"]["message"]
    assert job_folders(work_dir) == []


# --- results ----------------------------------------------------------------------------------------------------


def test_a_server_run_gives_the_local_result_and_its_provenance(url, ct_file, tiny_checkpoints, tmp_path, capsys):
    common = ["--seed", "5", "--samples", "2", "--progress", "jsonl"]
    local = [
        "enhance",
        str(ct_file),
        "-o",
        str(tmp_path / "local.nii.gz"),
        "--checkpoint",
        str(tiny_checkpoints["denoise"]),
    ]
    assert main([*local, "--uncertainty", str(tmp_path / "local_u.nrrd"), "--device", "cpu", *common]) == 0
    capsys.readouterr()
    remote = ["enhance", str(ct_file), "-o", str(tmp_path / "remote.nii.gz"), "--checkpoint", TINY]
    assert (
        main([*remote, "--uncertainty", str(tmp_path / "remote_u.nrrd"), "--server", url, "--token", TOKEN, *common])
        == 0
    )
    assert_same_volume(tmp_path / "local.nii.gz", tmp_path / "remote.nii.gz")
    assert_same_volume(tmp_path / "local_u.nrrd", tmp_path / "remote_u.nrrd")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "done"
    assert {e["event"] for e in events[1:-1]} == {"step"}
    done = events[-1]
    assert done["output"] == str(tmp_path / "remote.nii.gz") and done["uncertainty"] == str(tmp_path / "remote_u.nrrd")
    assert (done["checkpoint"], done["steps"], done["seed"], done["device"]) == (TINY, 2, 5, "cpu")
    assert done["engine_version"] and done["samples"] == 2


def test_a_failed_job_has_the_local_runs_message_and_exit_code(url, tmp_path, tiny_checkpoints, capsys):
    def run(scan, output, checkpoint, *more):
        code = main(["enhance", str(scan), "-o", str(tmp_path / output), "--checkpoint", checkpoint, *more])
        return code, capsys.readouterr().err.strip().splitlines()[-1]

    remote = (TINY, "--server", url, "--token", TOKEN)
    constant = write_volume(ct_volume(0).with_array(np.full((10, 24, 20), -1000, np.int16)), tmp_path / "flat.nrrd")
    local = run(constant, "a.nrrd", str(tiny_checkpoints["denoise"]))
    assert local[0] == EXIT_INPUT and "empty or constant" in local[1]
    assert run(constant, "b.nrrd", *remote) == local
    scan = write_volume(ct_volume(0), tmp_path / "scan.nrrd")  # a denoising checkpoint asked to super-resolve
    local = run(scan, "c.nrrd", str(tiny_checkpoints["denoise"]), "--task", "sr")
    assert local[0] == EXIT_CHECKPOINT
    assert run(scan, "d.nrrd", *remote, "--task", "sr") == local
    assert not list(tmp_path.glob("[abcd].nrrd")) and not list(tmp_path.glob(".*partial*"))


def test_eight_concurrent_clients_each_get_their_own_result(url, tiny_checkpoints, tmp_path, work_dir):
    inputs = [write_volume(ct_volume(i), tmp_path / f"in{i}.nrrd") for i in range(8)]
    for i, path in enumerate(inputs):  # the references: the same scans and seeds run here
        argv = ["enhance", str(path), "-o", str(tmp_path / f"local{i}.nrrd"), "--seed", str(i), "--progress", "none"]
        assert main([*argv, "--checkpoint", str(tiny_checkpoints["denoise"]), "--device", "cpu"]) == 0
    results, errors = {}, []

    def client(i):
        try:
            out = tmp_path / f"remote{i}.nrrd"
            results[i] = Client(url, TOKEN).run(inputs[i], [out], {"checkpoint": TINY, "seed": i})
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == [] and sorted(results) == list(range(8))
    for i in range(8):
        assert results[i]["seed"] == i
        assert_same_volume(tmp_path / f"local{i}.nrrd", tmp_path / f"remote{i}.nrrd")
    assert job_folders(work_dir) == []  # each client removed its job


def long_job(client: Client, tmp_path: Path) -> str:
    """A job that runs for minutes: a larger scan, and many steps of the tiny model."""
    path = write_volume(ct_volume(1, (24, 80, 96)), tmp_path / "long.nrrd", overwrite=True)
    return client.submit(path, {"checkpoint": TINY, "steps": 400})["id"]


def test_cancel_stops_the_job_and_frees_the_worker(url, ct_file, tmp_path, work_dir):
    client = Client(url, TOKEN)
    job = long_job(client, tmp_path)
    queued = long_job(client, tmp_path)
    wait_for(lambda: any(e["event"] == "step" for e in client.status(job)["events"]))
    assert client.status(queued)["position"] == 1
    assert client.cancel(queued)["state"] == "cancelled"
    assert client.cancel(job)["state"] in ("cancelling", "cancelled")
    started = time.monotonic()
    wait_for(lambda: client.status(job)["state"] == "cancelled", timeout=30)
    error = client.status(job)["error"]
    assert error["kind"] == "cancelled" and "cancelled" in error["message"]
    client.run(ct_file, [tmp_path / "after.nrrd"], {"checkpoint": TINY})  # the worker is free again
    assert time.monotonic() - started < 30
    assert read_volume(tmp_path / "after.nrrd").array.shape == (10, 24, 20)
    client.cancel(job)  # an ended job is forgotten
    with pytest.raises(ServerError, match=f"no job {job} on this server"):
        client.status(job)
    client.cancel(queued)
    assert job_folders(work_dir) == []


def test_finished_jobs_expire_with_their_files(tiny_checkpoints, ct_file, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    argv = server_options(tiny_checkpoints, work, "--keep-minutes", "0.01")
    with serve_in_thread(*argv) as address:
        client = Client(address, TOKEN)
        job = client.submit(ct_file, {"checkpoint": TINY})["id"]
        wait_for(lambda: client.status(job)["state"] == "done")
        assert len(job_folders(work)) == 1

        def expired():
            try:
                client.status(job)
            except ServerError as exc:
                return "no job" in str(exc)
            return False

        wait_for(expired, timeout=10)
        assert job_folders(work) == []
    assert list(work.iterdir()) == []  # shutting down removes the server's folder


def test_a_server_killed_mid_job_gives_a_clear_error_and_no_output(tiny_checkpoints, tmp_path):
    env = {**os.environ, "SDENHANCE_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
    serve = [sys.executable, "-m", "sdenhance", "serve", "--port", "0", "--device", "cpu", "--work-dir", str(tmp_path)]
    server = subprocess.Popen(
        [*serve, "--models", str(tiny_checkpoints["denoise"].parent)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        address = server.stdout.readline().split("listening on ")[1].strip()
        scan = write_volume(ct_volume(1, (24, 80, 96)), tmp_path / "scan.nrrd")
        output = tmp_path / "out" / "result.nii.gz"
        output.parent.mkdir()
        client = subprocess.Popen(
            [sys.executable, "-m", "sdenhance", "enhance", str(scan), "-o", str(output), "--checkpoint", TINY]
            + ["--steps", "400", "--server", address, "--progress", "jsonl"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        events = (json.loads(line)["event"] for line in client.stdout)
        assert "step" in events  # the job runs on the server
        server.send_signal(signal.SIGKILL)
        _, err = client.communicate(timeout=120)
    finally:
        server.kill()
        server.wait()
    assert client.returncode == EXIT_SERVER
    assert f"error: lost contact with the server at {address}" in err and "Traceback" not in err
    assert list(output.parent.iterdir()) == []


def test_sigterm_stops_the_server_cleanly_and_removes_its_files(tmp_path):
    env = {**os.environ, "SDENHANCE_TOKEN": TOKEN}
    command = [
        sys.executable,
        "-m",
        "sdenhance",
        "serve",
        "--port",
        "0",
        "--device",
        "cpu",
        "--work-dir",
        str(tmp_path),
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    address = server.stdout.readline().split("listening on ")[1].strip()
    assert Client(address, TOKEN).info()["devices"] == ["cpu"]
    server.send_signal(signal.SIGTERM)
    out, err = server.communicate(timeout=60)
    assert server.returncode == 0 and "stopped" in out and "error" not in err
    assert list(tmp_path.iterdir()) == []


def test_the_client_loads_without_torch_or_numpy():
    code = "import sys, sdenhance.client; print(sorted({'torch', 'numpy', 'fastapi'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_serve_without_the_server_extra_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if uvicorn were not installed
    assert main(["serve", "--port", "0"]) == EXIT_INPUT
    assert "this needs uvicorn, which is not installed: pip install 'sdenhance[server]'" in capsys.readouterr().err
