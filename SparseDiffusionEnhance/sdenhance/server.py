"""``sdenhance serve``: a processing server (FastAPI on uvicorn) for computers without a GPU.

A client uploads one volume file with the options of ``enhance``, follows the job, downloads the result and
removes the job (``sdenhance.client``). Jobs wait in one queue served by one worker thread per GPU (or one for
the CPU); each runs the command line's own ``enhance`` in this process, passed in by ``sdenhance.cli``.

Security: every request needs the bearer token; the server names every file itself (the request chooses among
fixed formats and the server's checkpoint names, never a path); uploads are limited in bytes and voxels, and
NRRD/MHA headers that point to data elsewhere are refused; nothing from a request reaches a shell.
"""

from __future__ import annotations

import ipaddress
import math
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from . import __version__
from .client import ENDED, REMOTE_FLAGS, REMOTE_OPTIONS, UPLOAD_FORMATS
from .errors import (
    EXIT_CHECKPOINT,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_KINDS,
    EXIT_SERVER,
    EXIT_TERMINATED,
    EngineError,
    InputError,
    classify,
)
from .registry import list_shipped

#: ``check(argv)``: refuse bad ``enhance`` arguments at once (raises InputError).
CheckArgs = Callable[[list[str]], None]
#: ``run(argv, device, on_event, should_stop)``: ``enhance`` in this process; returns its ``done`` event.
RunJob = Callable[[list[str], str, Callable[[dict], None], Callable[[], bool]], dict]
#: Event fields that hold the server's own paths: never sent to a client.
PATH_FIELDS = ("output", "uncertainty")
#: ITK readers by upload format, so that a file is read as what the client declared, never sniffed.
IMAGE_IOS = {"nii.gz": "NiftiImageIO", "nii": "NiftiImageIO", "nrrd": "NrrdImageIO", "mha": "MetaImageIO"}
MIN_TOKEN_CHARS = 16
#: The request's ``Authorization: Bearer ...`` (None without one: the check below then refuses it).
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int
    max_voxels: int
    max_queued: int
    keep_s: float  # how long a finished job's result waits for its download


class ApiError(Exception):
    """A refused request: HTTP status, message, and the exit code the same problem has on the command line."""

    def __init__(self, status: int, message: str, exit_code: int = EXIT_SERVER):
        super().__init__(message)
        self.status, self.message, self.exit_code = status, message, exit_code


def error_body(exit_code: int, message: str) -> dict:
    return {"error": {"kind": EXIT_KINDS.get(exit_code, "cancelled"), "exit_code": exit_code, "message": message}}


@dataclass
class Job:
    id: str
    folder: Path
    argv: list[str]
    state: str = "queued"
    events: list[dict] = field(default_factory=list)
    result: dict | None = None
    error: dict | None = None
    ended: float | None = None  # time.monotonic() when it ended
    stop: threading.Event = field(default_factory=threading.Event)

    def file(self, which: str) -> Path | None:
        """The job's ``result`` or ``uncertainty`` file (named here, in the format the client asked for)."""
        return next(self.folder.glob(f"{which}.*"), None)

    def redact(self, text: str) -> str:
        """``text`` without the server's folder (engine messages name the files they could not read)."""
        return text.replace(f"{self.folder}{os.sep}", "").replace(str(self.folder), "the job's folder")

    def record(self, event: dict) -> None:
        event = {k: v for k, v in event.items() if k not in PATH_FIELDS}
        if "message" in event:
            event["message"] = self.redact(str(event["message"]))
        self.events.append(event)


class Scheduler:
    """The job queue, one worker thread per device, and the expiry of finished jobs' files."""

    def __init__(self, run: RunJob, devices: list[str], root: Path, limits: Limits):
        self.run, self.devices, self.root, self.limits = run, devices, root, limits
        self.jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._lock = threading.Condition()
        self._closing = threading.Event()
        self._threads = [threading.Thread(target=self._work, args=(d,), name=f"worker {d}") for d in devices]
        self._threads.append(threading.Thread(target=self._expire_periodically, name="expiry"))
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def new_job(self, argv_of: Callable[[Path], list[str]]) -> Job:
        """A job in a new folder named here; ``argv_of(folder)`` gives its ``enhance`` arguments."""
        job_id = uuid.uuid4().hex
        job = Job(job_id, self.root / job_id, argv_of(self.root / job_id))
        job.folder.mkdir()
        return job

    def submit(self, job: Job) -> None:
        with self._lock:
            if len(self._queue) >= self.limits.max_queued:
                raise ApiError(503, f"the server's queue is full ({self.limits.max_queued} jobs); try again later")
            self.jobs[job.id] = job
            self._queue.append(job)
            self._lock.notify()

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            minutes = self.limits.keep_s / 60
            raise ApiError(404, f"no job {job_id} on this server (finished jobs are kept {minutes:g} minutes)")
        return job

    def status(self, job: Job, since: int = 0) -> dict:
        with self._lock:
            position = self._queue.index(job) + 1 if job in self._queue else None
            state = "cancelling" if job.state == "running" and job.stop.is_set() else job.state
            return {
                "id": job.id,
                "state": state,
                "position": position,
                "events": job.events[since:],
                "result": job.result,
                "error": job.error,
            }

    def remove(self, job: Job) -> None:
        """Cancel a queued or running job; forget an ended one (its files go either way)."""
        with self._lock:
            if job in self._queue:
                self._queue.remove(job)
                self._end(job, "cancelled", self._cancelled())
            elif job.state == "running":
                job.stop.set()  # the worker ends it at its next batch of patches
            else:
                self._forget(job)

    def close(self) -> None:
        """Stop the workers (cancelling what runs) and remove every file the server made."""
        self._closing.set()
        with self._lock:
            for job in self.jobs.values():
                job.stop.set()
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def _work(self, device: str) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing.is_set():
                    self._lock.wait()
                if self._closing.is_set():
                    return
                job = self._queue.popleft()
                job.state = "running"
            self._run(job, device)

    def _run(self, job: Job, device: str) -> None:
        try:
            done = self.run(job.argv, device, job.record, job.stop.is_set)
        except Exception as exc:
            code, kind, message = classify(exc)
            if code == EXIT_INTERNAL:  # a bug: the server's log needs its traceback
                traceback.print_exception(exc)
            with self._lock:
                state = "cancelled" if kind == "cancelled" else "failed"
                self._end(job, state, {"kind": kind, "exit_code": code, "message": job.redact(message)})
            return
        with self._lock:
            job.result = {k: v for k, v in done.items() if k not in (*PATH_FIELDS, "event")}
            job.state, job.ended = "done", time.monotonic()
            if job.stop.is_set():  # cancelled after its last patch: nobody will download it
                self._end(job, "cancelled", self._cancelled())

    @staticmethod
    def _cancelled() -> dict:
        return error_body(EXIT_TERMINATED, "cancelled by the client before the run finished")["error"]

    @staticmethod
    def _end(job: Job, state: str, error: dict) -> None:
        job.state, job.error, job.ended = state, error, time.monotonic()
        shutil.rmtree(job.folder, ignore_errors=True)

    def _forget(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        shutil.rmtree(job.folder, ignore_errors=True)

    def expire(self) -> None:
        """Forget jobs that ended more than ``keep_s`` ago, with their files."""
        now = time.monotonic()
        with self._lock:
            for job in list(self.jobs.values()):
                if job.state in ENDED and now - job.ended > self.limits.keep_s:
                    self._forget(job)

    def _expire_periodically(self) -> None:
        while not self._closing.wait(min(30.0, self.limits.keep_s / 4)):
            self.expire()


def catalogue(models_dir: str | None) -> dict[str, str]:
    """Checkpoint name -> path: the shipped models and the ``.safetensors`` files (with their card) in
    ``models_dir``; a request can only name one of these."""
    names = {card.name: str(card.path) for card in list_shipped()}
    for weights in sorted(Path(models_dir).glob("*.safetensors")) if models_dir else ():
        if weights.with_suffix(".json").is_file():
            names[weights.stem] = str(weights)
    return names


def enhance_argv(
    query: dict[str, str], folder: Path, formats: tuple[str, str], checkpoints: dict[str, str]
) -> list[str]:
    """The ``enhance`` arguments of a request: the server's own paths (``formats``: input's and output's), and
    only the options a request may set."""
    unknown = sorted(set(query) - set(REMOTE_OPTIONS))
    if unknown:
        raise ApiError(
            400, f"unknown option {', '.join(unknown)}; a server takes {', '.join(REMOTE_OPTIONS)}", EXIT_INPUT
        )
    input_format, output_format = formats
    argv = [str(folder / f"input.{input_format}"), f"--output={folder / f'result.{output_format}'}"]
    for name in REMOTE_OPTIONS:
        value = query.get(name)
        if value is None:
            continue
        if name in REMOTE_FLAGS:
            if value not in ("true", "false"):
                raise ApiError(400, f"option {name} is true or false, not {value!r}", EXIT_INPUT)
            if value == "true":
                argv.append(f"--{name}")
            continue
        if name == "uncertainty":  # the format of the spread's file, which the server names
            value = folder / f"uncertainty.{query_format(query, name)}"
        elif name == "checkpoint":
            if value not in checkpoints:
                offered = ", ".join(sorted(checkpoints)) or "none"
                raise ApiError(400, f"this server has no checkpoint {value!r}; it offers: {offered}", EXIT_CHECKPOINT)
            value = checkpoints[value]
        argv.append(f"--{name}={value}")
    return argv


def query_format(query: dict[str, str], name: str) -> str:
    value = query.get(name, "nrrd")
    if value not in UPLOAD_FORMATS:
        raise ApiError(400, f"{name} {value!r}: a server reads and writes {', '.join(UPLOAD_FORMATS)}", EXIT_INPUT)
    return value


def check_upload(path: Path, input_format: str, max_voxels: int) -> None:
    """Refuse, from its header alone, a file that is not the declared type, holds too many voxels, or (NRRD and
    MHA) keeps its voxels in another file, which would make the reader open a path the client chose."""
    import SimpleITK as sitk

    if input_format in ("nrrd", "mha"):
        refuse_detached_data(path, input_format)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(IMAGE_IOS[input_format])
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"the upload is not a readable {input_format} file; send a NIfTI, NRRD or MHA volume") from exc
    voxels = math.prod(reader.GetSize()) * reader.GetNumberOfComponents()
    if voxels > max_voxels:
        raise InputError(
            f"the upload has {voxels:,} voxels, more than this server accepts ({max_voxels:,}); crop or "
            "downsample it, or enhance it on your own computer"
        )


#: Header keys that name a separate data file.
DETACHED_KEYS = {"nrrd": ("data file", "datafile"), "mha": ("elementdatafile",)}


def refuse_detached_data(path: Path, input_format: str) -> None:
    with open(path, "rb") as stream:
        header = stream.read(1 << 16).decode("latin-1")
    separator = ":" if input_format == "nrrd" else "="
    for line in header.splitlines():
        if input_format == "nrrd" and not line.strip():
            return  # the blank line that ends a NRRD header
        key, _, value = line.partition(separator)
        key = key.strip().lower()
        if key in DETACHED_KEYS[input_format]:
            if input_format == "mha" and value.strip().upper() == "LOCAL":
                return  # the voxels follow in this file: the header ends here
            raise InputError("the upload's header points to a separate data file; send a single-file volume")


def make_app(scheduler: Scheduler, token: str, check: CheckArgs, checkpoints: dict[str, str]) -> FastAPI:
    limits = scheduler.limits

    def authorised(credentials: Credentials) -> None:
        given = credentials.credentials.encode() if credentials else b""
        if not secrets.compare_digest(given, token.encode()):
            raise ApiError(401, "the server refused the token (missing or wrong); pass the one it was started with")

    @asynccontextmanager
    async def lifespan(app):
        yield
        scheduler.close()

    app = FastAPI(
        title="sdenhance",
        version=__version__,
        dependencies=[Depends(authorised)],
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(error_body(exc.exit_code, exc.message), status_code=exc.status)

    @app.exception_handler(EngineError)
    async def engine_error(request, exc: EngineError):
        code, _, message = classify(exc)
        return JSONResponse(error_body(code, message), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return JSONResponse(error_body(EXIT_SERVER, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        return JSONResponse(error_body(EXIT_INPUT, f"bad request: {exc.errors()}"), status_code=400)

    @app.get("/v1/info")
    def info():
        return {
            "engine_version": __version__,
            "devices": scheduler.devices,
            "checkpoints": sorted(checkpoints),
            "formats": list(UPLOAD_FORMATS),
            "max_upload_bytes": limits.max_upload_bytes,
            "max_voxels": limits.max_voxels,
        }

    @app.post("/v1/jobs", status_code=201)
    async def submit(request: Request):
        query = dict(request.query_params)
        input_format = query_format(query, "input_format")
        output_format = query_format(query, "output_format")
        options = {k: v for k, v in query.items() if k not in ("input_format", "output_format")}
        if int(request.headers.get("content-length") or 0) > limits.max_upload_bytes:
            raise too_large(limits.max_upload_bytes)
        formats = (input_format, output_format)
        job = scheduler.new_job(lambda folder: enhance_argv(options, folder, formats, checkpoints))
        try:
            check(job.argv)
            await receive(request, job.folder / f"input.{input_format}", limits.max_upload_bytes)
            await run_in_threadpool(check_upload, job.folder / f"input.{input_format}", input_format, limits.max_voxels)
            scheduler.submit(job)
        except BaseException:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise
        return scheduler.status(job)

    @app.get("/v1/jobs/{job_id}")
    def status(job_id: str, since: int = 0):
        return scheduler.status(scheduler.get(job_id), since)

    @app.get("/v1/jobs/{job_id}/files/{which}")
    def download(job_id: str, which: str):
        job = scheduler.get(job_id)
        if which not in ("result", "uncertainty"):
            raise ApiError(404, f"a job has a result and, with several samples, an uncertainty; not {which!r}")
        if job.state != "done":
            raise ApiError(409, f"the job is {job.state}; download its result once it is done")
        path = job.file(which)
        if path is None:
            raise ApiError(404, f"the job has no {which} file (ask for one with the uncertainty option)")
        return FileResponse(path, media_type="application/octet-stream", filename=path.name)

    @app.delete("/v1/jobs/{job_id}")
    def remove(job_id: str):
        job = scheduler.get(job_id)
        scheduler.remove(job)
        return scheduler.status(job)

    return app


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the upload is larger than this server accepts ({limit:,} bytes); crop or downsample the volume, or "
        "enhance it on your own computer",
        EXIT_INPUT,
    )


async def receive(request: Request, path: Path, limit: int) -> None:
    """Write the request body to ``path``, refusing it as soon as it exceeds ``limit`` bytes."""
    size = 0
    with open(path, "wb") as stream:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            stream.write(chunk)
    if size == 0:
        raise ApiError(400, "the upload is empty: send the volume file as the request body", EXIT_INPUT)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False


def pick_token(given: str | None, host: str) -> tuple[str, bool]:
    """(token, whether it was generated): one is required, and on a non-loopback address it must be given."""
    if given:
        if len(given) < MIN_TOKEN_CHARS:
            raise InputError(f"the token is too short: use at least {MIN_TOKEN_CHARS} random characters")
        return given, False
    if not is_loopback(host):
        raise InputError(
            f"refusing to listen on {host} without a token: anyone who reaches it could run jobs. Set "
            'SDENHANCE_TOKEN to a long random string, e.g. python -c "import secrets; print(secrets.token_urlsafe())"'
        )
    return secrets.token_urlsafe(32), True


def worker_devices(device: str) -> list[str]:
    """One worker per GPU ("cuda:0", ...), or one for the CPU."""
    import torch

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return ["cpu"]
    if not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is visible to PyTorch; use --device cpu")
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())]


@dataclass
class Prepared:
    """A server bound to its socket, ready to ``server.run(sockets=[sock])``."""

    server: uvicorn.Server
    sock: socket.socket
    url: str
    token: str
    generated: bool  # the token was made here and must be shown to the user


def prepare(args, check: CheckArgs, run: RunJob) -> Prepared:
    """Bind the socket and build the app from the ``serve`` command's arguments (refusing unsafe ones first)."""
    token, generated = pick_token(args.token or os.environ.get("SDENHANCE_TOKEN"), args.host)
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_voxels=args.max_voxels,
        max_queued=args.max_queued,
        keep_s=args.keep_minutes * 60,
    )
    checkpoints = catalogue(args.models)
    devices = worker_devices(args.device)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.create_server((args.host, args.port), family=family)
    root = Path(tempfile.mkdtemp(prefix="sdenhance-serve-", dir=args.work_dir))
    scheduler = Scheduler(run, devices, root, limits)
    app = make_app(scheduler, token, check, checkpoints)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10))
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    return Prepared(server, sock, f"http://{host}:{sock.getsockname()[1]}", token, generated)
