"""Client of ``sdenhance serve``: send a volume file, follow the job, fetch the result atomically, or cancel.

Torch-free, numpy-free and Qt-free (only ``requests``, which Slicer ships): the command line's ``enhance --server``
and the Slicer module's Lib both use it, and Slicer's own process must never import torch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from .errors import EXIT_INPUT, EXIT_INTERNAL, EXIT_SERVER, EngineError, Terminated, require

#: File types a server accepts as upload and writes as result: single files, no detached data.
UPLOAD_FORMATS = ("nii.gz", "nii", "nrrd", "mha")
#: The ``enhance`` options a request may carry, by their command-line names. No path is among them: the server
#: names every file (``uncertainty`` gives only the format of the spread's) and ``checkpoint`` is one of the
#: names the server offers.
REMOTE_OPTIONS = (
    "task",
    "checkpoint",
    "factor",
    "axis",
    "modality",
    "steps",
    "heun",
    "seed",
    "samples",
    "patch",
    "overlap",
    "batch",
    "precision",
    "no-skip-background",
    "preview",
    "uncertainty",
)
#: The options among them that are yes/no flags ("true" or "false" in a request).
REMOTE_FLAGS = ("heun", "no-skip-background")
#: Job states after which nothing more happens.
ENDED = ("done", "failed", "cancelled")
#: Seconds to wait for the server to answer one request (an upload or download may take longer in total).
REQUEST_TIMEOUT_S = 30.0


class ServerError(EngineError):
    """A server refused a request, a job failed there, or the server could not be reached.

    ``exit_code`` is the one the same failure has in a local run (input, checkpoint, memory...), or 5 (server).
    """

    def __init__(self, message: str, exit_code: int = EXIT_SERVER):
        super().__init__(message)
        self.exit_code = exit_code


def format_of(path: str | os.PathLike) -> str | None:
    """The upload format of a file name ("nii.gz", "nrrd", ...), or None for a type a server does not take."""
    name = Path(path).name.lower()
    return next((f for f in UPLOAD_FORMATS if name.endswith("." + f)), None)


def options_of(args) -> dict:
    """The options a server takes from parsed ``enhance`` arguments (the spread's path becomes a format later)."""
    return {name: getattr(args, name.replace("-", "_")) for name in REMOTE_OPTIONS if name != "uncertainty"}


def query_options(options: dict) -> dict[str, str]:
    """``options`` (command-line names, None or False for "not given") as a request's query parameters."""
    unknown = sorted(set(options) - set(REMOTE_OPTIONS))
    if unknown:
        raise ValueError(f"options a server does not take: {', '.join(unknown)}")
    query = {}
    for name, value in options.items():
        if value is None or value is False:
            continue
        if isinstance(value, (tuple, list)):
            value = ",".join(map(str, value))
        query[name] = "true" if value is True else str(value)
    return query


class Client:
    """One server: its URL and bearer token."""

    def __init__(self, url: str, token: str, timeout: float = REQUEST_TIMEOUT_S, poll_s: float = 0.25):
        require("client")  # a message naming the pip extra rather than an ImportError
        import requests

        if not url.startswith(("http://", "https://")):
            raise ServerError(f"the server URL {url!r} must start with http:// or https://", EXIT_INPUT)
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self.poll_s = poll_s

    def _request(self, method: str, path: str, **kwargs):
        """The response to one request; a refusal or a lost connection as ServerError with the server's message."""
        import requests

        try:
            response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ServerError(
                f"lost contact with the server at {self.url} ({type(exc).__name__}); check that it runs and that "
                "the URL is right, then start again"
            ) from exc
        if response.status_code >= 400:
            raise error_of(response)
        return response

    def info(self) -> dict:
        """Version, devices, models and limits of the server (also checks the token)."""
        return self._request("GET", "/v1/info").json()

    def submit(self, path: Path, options: dict, output_format: str = "nrrd") -> dict:
        """Upload ``path`` and queue a job; its first status (``id``, ``state``, ``position``)."""
        input_format = format_of(path)
        if input_format is None:
            raise ServerError(f"{path}: a server takes {', '.join(UPLOAD_FORMATS)} files", 2)
        limit = self.info()["max_upload_bytes"]
        if Path(path).stat().st_size > limit:
            raise ServerError(
                f"{path} is {Path(path).stat().st_size:,} bytes, more than the server accepts ({limit:,}); "
                "crop the volume or run it on this computer",
                2,
            )
        query = {**query_options(options), "input_format": input_format, "output_format": output_format}
        with open(path, "rb") as body:
            return self._request("POST", "/v1/jobs", params=query, data=body).json()

    def status(self, job: str, since: int = 0) -> dict:
        """The job's state, its window counts, and its progress events from number ``since`` on."""
        return self._request("GET", f"/v1/jobs/{job}", params={"since": since}).json()

    def cancel(self, job: str) -> dict:
        """Stop the job (queued or running) and remove its files on the server."""
        return self._request("DELETE", f"/v1/jobs/{job}").json()

    def download(self, job: str, which: str, path: Path) -> Path:
        """Write the job's ``result`` or ``uncertainty`` file to ``path``, whole or not at all."""
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with self._request("GET", f"/v1/jobs/{job}/files/{which}", stream=True) as response:
                with open(partial, "wb") as stream:
                    for chunk in response.iter_content(1 << 20):
                        stream.write(chunk)
            os.replace(partial, path)
        except OSError as exc:  # a connection cut during the body, or a full disk
            raise ServerError(f"the download of the {which} from {self.url} broke off: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
        return path

    def follow(self, job: str, on_status: Callable[[dict], None], should_stop: Callable[[], bool]) -> dict:
        """Poll until the job ends; each status goes to ``on_status`` (with only the events not seen before).

        Returns the ``done`` status; raises ServerError for a failed job, Terminated when ``should_stop()``.
        """
        seen = 0
        while True:
            if should_stop():
                raise Terminated("cancelled before the run finished; no partial output is left")
            status = self.status(job, seen)
            seen += len(status["events"])
            on_status(status)
            if status["state"] == "done":
                return status
            if status["state"] in ENDED:
                error = status["error"] or {}
                raise ServerError(error.get("message", f"the job {status['state']}"), error.get("exit_code", 1))
            time.sleep(self.poll_s)

    def run(
        self,
        path: Path,
        outputs: list[Path],
        options: dict,
        on_status: Callable[[dict], None] = lambda status: None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> dict:
        """Enhance ``path`` on the server into ``outputs`` (result, and uncertainty when ``options`` asks for
        several samples and two outputs are given); the ``done`` event's fields (provenance).

        The job is removed from the server however this ends; no output is written unless the job succeeded.
        """
        formats = [format_of(output) or "nrrd" for output in outputs]
        spread = {"uncertainty": formats[1]} if len(outputs) > 1 else {}
        job = self.submit(path, {**options, **spread}, formats[0])["id"]
        written = []
        try:
            done = self.follow(job, on_status, should_stop)
            written.append(self.download(job, "result", outputs[0]))
            if len(outputs) > 1:
                written.append(self.download(job, "uncertainty", outputs[1]))
        except BaseException:  # a result without its uncertainty is a partial output too
            for output in written:
                output.unlink(missing_ok=True)
            raise
        finally:
            self._forget(job)
        return done["result"]

    def _forget(self, job: str) -> None:
        """Cancel and remove the job, if the server can still be reached (its own expiry cleans up otherwise)."""
        try:
            self.cancel(job)
        except ServerError:
            pass


def error_of(response) -> ServerError:
    """The ServerError a refused request stands for, with the server's own message and exit code."""
    try:
        error = response.json()["error"]
        return ServerError(error["message"], int(error["exit_code"]))
    except (ValueError, KeyError, TypeError):  # not one of our servers (a proxy's page, another service)
        code = EXIT_INTERNAL if response.status_code >= 500 else EXIT_SERVER
        return ServerError(f"{response.url} answered HTTP {response.status_code}: {response.text[:200]}", code)
