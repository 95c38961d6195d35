"""Jobs per minute of one ``sdenhance serve`` for N concurrent clients, on loopback (README: processing server).

    python scripts/server_throughput.py --clients 1 2 4 8 --jobs-per-client 2 --out throughput.json \\
        --figure throughput.png

Starts the server as its own process (one CPU worker, or one per GPU), sends each client's jobs one after the
other from its own thread and its own ``Client``, and reports jobs per minute and the median time from upload to
downloaded result. The scan is the demo's torso phantom with 20 HU of noise.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from sdenhance.client import Client
from sdenhance.io import write_volume
from sdenhance.phantom import torso_phantom


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="ct-denoise")
    p.add_argument("--shape", default="16,128,128", help="scan size z,y,x")
    p.add_argument("--steps", type=int, help="sparse steps (default: the model's)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--jobs-per-client", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "auto", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="the server's CPU threads (OMP_NUM_THREADS)")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    p.add_argument("--figure", type=Path, help="plot jobs per minute against clients here (needs matplotlib)")
    return p.parse_args(argv)


def start_server(token: str, args, folder: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "SDENHANCE_TOKEN": token, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "sdenhance", "serve", "--port", "0", "--device", args.device]
    server = subprocess.Popen([*command, "--work-dir", str(folder)], env=env, stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().split("listening on ")[1].strip()
    threading.Thread(target=server.stdout.read, daemon=True).start()  # drained, so the server never blocks on it
    return server, url


def run_clients(url: str, token: str, scan: Path, folder: Path, clients: int, jobs: int, options: dict) -> dict:
    latencies, errors = [], []

    def client(index: int) -> None:
        connection = Client(url, token)
        for job in range(jobs):
            started = time.monotonic()
            try:
                connection.run(scan, [folder / f"out-{clients}-{index}-{job}.nrrd"], {**options, "seed": job})
            except Exception as exc:  # reported, not hidden: a failed job must not count as throughput
                errors.append(f"client {index} job {job}: {exc}")
                return
            latencies.append(time.monotonic() - started)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    if errors:
        raise RuntimeError("; ".join(errors))
    return {
        "clients": clients,
        "jobs": clients * jobs,
        "wall_s": round(wall, 2),
        "jobs_per_minute": round(60 * clients * jobs / wall, 2),
        "median_latency_s": round(statistics.median(latencies), 2),
    }


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.2), dpi=120)
    clients = [r["clients"] for r in rows]
    axis.plot(clients, [r["jobs_per_minute"] for r in rows], "o-", label="jobs per minute")
    axis.set_xlabel("concurrent clients")
    axis.set_ylabel("jobs per minute")
    axis.set_xticks(clients)
    axis.set_ylim(bottom=0)
    latency = axis.twinx()
    latency.plot(clients, [r["median_latency_s"] for r in rows], "s--", color="tab:orange", label="median latency")
    latency.set_ylabel("median latency (s)")
    latency.set_ylim(bottom=0)
    axis.set_title(title, fontsize=9)
    figure.legend(loc="upper left", bbox_to_anchor=(0.12, 0.88), fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    token = secrets.token_urlsafe(24)
    shape = tuple(int(s) for s in args.shape.split(","))
    options = {"checkpoint": args.checkpoint, "steps": args.steps}
    with tempfile.TemporaryDirectory(prefix="sdenhance-throughput-") as tmp:
        folder = Path(tmp)
        phantom = torso_phantom(shape)
        noisy = phantom.array + np.random.default_rng(0).normal(0, 20, shape)
        scan = write_volume(phantom.with_array(noisy.astype(np.int16)), folder / "scan.nrrd")
        server, url = start_server(token, args, folder)
        try:
            run_clients(url, token, scan, folder, 1, 1, options)  # warm-up: imports and the first model load
            rows = []
            for clients in args.clients:
                rows.append(run_clients(url, token, scan, folder, clients, args.jobs_per_client, options))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    result = {"checkpoint": args.checkpoint, "shape": shape, "steps": args.steps, "device": args.device}
    result |= {"threads": args.threads, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    if args.figure:
        title = f"sdenhance serve, {args.checkpoint} on {shape[0]}x{shape[1]}x{shape[2]}, {args.device}"
        plot(rows, args.figure, f"{title}, {args.threads} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
