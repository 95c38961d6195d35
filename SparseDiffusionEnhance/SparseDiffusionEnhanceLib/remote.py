"""A run on a processing server (``sdenhance serve``), seen through the same events as a local worker process.

The engine's client (``sdenhance.client``: requests only, no torch, no Qt) runs in a thread and queues the
server's progress events as the lines a local worker would print, so ``poll()``, progress, Cancel and the
import of the result are the local worker's own code. The token is never written to the scene or the log.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sdenhance.errors import EXIT_INTERNAL, EXIT_KINDS, EXIT_OK, EXIT_TERMINATED

from .worker import WorkerProcess


@dataclass(frozen=True)
class ServerConnection:
    """Where to enhance instead of this computer: the server's URL and its bearer token."""

    url: str
    token: str = field(repr=False)  # kept out of logs and reprs


class ClientThread(threading.Thread):
    """The client's run in the place of a worker's process: ``wait()`` gives its exit code, as a process's does."""

    pid = None

    def __init__(self, run):
        super().__init__(target=None, name="SparseDiffusionEnhance server client", daemon=True)
        self._runClient = run
        self.exitCode: int | None = None

    def run(self) -> None:
        self.exitCode = self._runClient()

    def wait(self) -> int:
        self.join()
        return self.exitCode


class RemoteWorker(WorkerProcess):
    """The run that ``arguments`` (a local worker's command line) describe, on ``server``; same interface."""

    def __init__(self, arguments: list[str], server: ServerConnection, onEvent=None, onOutput=None):
        super().__init__(arguments, onEvent=onEvent, onOutput=onOutput)
        self.server = server
        self._position = None

    def start(self) -> None:
        from sdenhance.cli import (
            parse_enhance,
        )  # numpy and SimpleITK only: the options exactly as the engine reads them

        args = parse_enhance(self.arguments[self.arguments.index("enhance") + 1 :])
        self._process = ClientThread(lambda: self._runClient(args))
        self._process.start()

    def cancel(self) -> None:
        """Ask the client thread to stop the server's job, and return at once; ``poll()`` sees it end."""
        if self._process is None or self.returncode is not None or self._cancelledAt is not None:
            return
        self._cancelledAt = time.monotonic()
        self._killed = True  # no process to kill: the thread ends the server's job and then itself

    def _runClient(self, args) -> int:
        from sdenhance.client import Client, ServerError, options_of
        from sdenhance.errors import Terminated

        outputs = [Path(args.output)] + ([Path(args.uncertainty)] if args.uncertainty else [])
        self._lines.put(f"Sending {Path(args.input).name} to {self.server.url}…")
        try:
            client = Client(self.server.url, self.server.token)
            client.run(Path(args.input), outputs, options_of(args), self._report, lambda: self._cancelledAt is not None)
        except Terminated:
            return EXIT_TERMINATED
        except ServerError as exc:
            self._queueEvent(
                {"event": "error", "kind": EXIT_KINDS.get(exc.exit_code, "cancelled"), "message": str(exc)}
            )
            return exc.exit_code
        except Exception as exc:  # a bug here must still end the job, with its message
            logging.exception("The processing server's client failed")
            self._queueEvent({"event": "error", "kind": "internal", "message": f"{type(exc).__name__}: {exc}"})
            return EXIT_INTERNAL
        finally:
            self._lines.put(None)
        return EXIT_OK

    def _report(self, status: dict) -> None:
        if status["state"] == "queued" and status["position"] != self._position:
            self._position = status["position"]
            self._lines.put(f"Waiting in the server's queue: position {self._position}")
        for event in status["events"]:
            if event["event"] == "done":  # the provenance says where the result was made
                event = {**event, "server": self.server.url}
            self._queueEvent(event)

    def _queueEvent(self, event: dict) -> None:
        self._lines.put(json.dumps(event))


def makeWorker(arguments, environment, python, server: ServerConnection | None, onEvent=None, onOutput=None):
    """A local worker process for ``arguments``, or with ``server`` the same run on that processing server."""
    if server is None:
        return WorkerProcess(arguments, environment, python, onEvent=onEvent, onOutput=onOutput)
    return RemoteWorker(arguments, server, onEvent=onEvent, onOutput=onOutput)
