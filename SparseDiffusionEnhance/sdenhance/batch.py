"""``sdenhance batch LIST OUT_DIR [enhance options]``: many scans, split across processes, resumable.

Under ``torchrun`` every rank takes every WORLD_SIZE-th scan of the list (one GPU each, or CPU processes), and
rank 0 prints the summary of all ranks; without it one process does the whole list. Each output is written
atomically (``io.write_volume``), so one at its final name is complete: running the same command again skips
those and redoes the rest, which is how a crashed or cancelled run resumes. The scans themselves go through
the command line's own ``enhance``, passed in by ``sdenhance.cli``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .errors import EXIT_OK, InputError, Terminated, VolumeError, classify
from .io import OUTPUT_SUFFIXES, read_volume

#: ``enhance`` options that batch sets itself, per scan or for the whole run.
OWN_OPTIONS = ("-o", "--output", "--uncertainty", "--overwrite", "--progress", "--format", "--server", "--token")
#: How long ranks that finished wait for the others' summaries (one rank may be given far slower scans).
GATHER_TIMEOUT = datetime.timedelta(hours=24)
SUMMARY_FILE = "batch-summary.json"


def add_batch_parser(sub, run: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser(
        "batch",
        help="enhance every scan of a list into a folder (torchrun: split across processes); rerun to resume",
    )
    p.add_argument("list", help="text file: one input path per line (relative to its folder; # comments)")
    p.add_argument("out_dir", help="output folder: each result keeps its input's file name (DICOM folder: .nii.gz)")
    p.add_argument("options", nargs=argparse.REMAINDER, help="enhance options (--task, --checkpoint, --steps ...)")
    p.set_defaults(func=run)


def read_list(path: Path) -> list[Path]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the list {path}: {exc}") from exc
    entries = [line.split("#", 1)[0].strip() for line in lines]
    inputs = [Path(path).parent / entry for entry in entries if entry]
    if not inputs:
        raise InputError(f"the list {path} names no scan; write one input path per line")
    return inputs


def output_for(path: Path, out_dir: Path) -> Path:
    """The input's file name in ``out_dir``; NIfTI for inputs the engine cannot write (DICOM folder, .mhd)."""
    if path.name.lower().endswith(OUTPUT_SUFFIXES):
        return out_dir / path.name
    return out_dir / f"{path.name.split('.')[0]}.nii.gz"


def plan_outputs(inputs: list[Path], out_dir: Path) -> list[Path]:
    """One output per input; refuses two inputs that would write the same file."""
    outputs, seen = [], {}
    for path in inputs:
        output = output_for(path, out_dir)
        if output in seen:
            raise InputError(f"{seen[output]} and {path} would both be written to {output}; rename one")
        seen[output] = path
        outputs.append(output)
    return outputs


def check_options(options: list[str]) -> None:
    for option in options:
        if option.split("=", 1)[0] in OWN_OPTIONS:
            raise InputError(f"batch sets {option.split('=', 1)[0]} itself; leave it out of the enhance options")


def is_complete(path: Path) -> bool:
    """An output that reads back whole (every one this command writes does; a foreign or damaged one may not)."""
    try:
        read_volume(path)
    except VolumeError:
        return False
    return True


class Ranks:
    """This process's place among torchrun's (rank 0 of 1 without torchrun), and the gathering of summaries."""

    def __init__(self):
        self.rank = int(os.environ.get("RANK", 0))
        self.size = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if self.size > 1:
            import torch.distributed as dist

            # gloo carries only the small summaries (CPU tensors), whatever device the scans run on
            dist.init_process_group("gloo", timeout=GATHER_TIMEOUT)

    def device(self, asked: str) -> str | None:
        """This rank's GPU when the scans run on GPUs (None: the ``--device`` given, e.g. cpu)."""
        import torch

        if asked == "cpu" or not torch.cuda.is_available():
            return None
        return f"cuda:{self.local_rank % torch.cuda.device_count()}"

    def gather(self, records: list[dict]) -> list[dict]:
        """Every rank's records, on every rank; as JSON bytes, so that nothing is unpickled."""
        if self.size == 1:
            return records
        import torch
        import torch.distributed as dist

        data = torch.tensor(list(json.dumps(records).encode()), dtype=torch.uint8)
        lengths = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        dist.all_gather(lengths, torch.tensor([data.numel()]))
        longest = int(max(lengths))
        padded = torch.zeros(longest, dtype=torch.uint8)
        padded[: data.numel()] = data
        buffers = [torch.zeros(longest, dtype=torch.uint8) for _ in range(self.size)]
        dist.all_gather(buffers, padded)
        return [r for b, n in zip(buffers, lengths, strict=True) for r in json.loads(bytes(b[: int(n)].tolist()))]

    def close(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def run_sharded(args, check: Callable[[list[str]], argparse.Namespace], run: Callable[..., dict]) -> int:
    """The batch command: ``check(argv)`` parses enhance arguments, ``run(argv, device, on_event, should_stop)``
    enhances one scan in this process."""
    check_options(args.options)
    out_dir = Path(args.out_dir)
    inputs = read_list(Path(args.list))
    outputs = plan_outputs(inputs, out_dir)
    asked = check([str(inputs[0]), "-o", str(outputs[0]), *args.options]).device  # bad options fail before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    ranks = Ranks()
    try:
        mine = list(zip(inputs, outputs, strict=True))[ranks.rank :: ranks.size]
        device = ranks.device(asked)
        records = [enhance_one(path, output, args.options, device, run, ranks) for path, output in mine]
        records = ranks.gather(records)
    finally:
        ranks.close()
    if ranks.rank == 0:
        report(records, inputs, ranks.size, out_dir)
    return exit_code(records)


def enhance_one(path: Path, output: Path, options: list[str], device, run, ranks: Ranks) -> dict:
    record = {"input": str(path), "output": str(output), "rank": ranks.rank}
    if output.exists() and is_complete(output):
        return record | {"status": "skipped"}
    started = time.monotonic()
    argv = [str(path), "-o", str(output), "--overwrite", *options]  # an incomplete output is redone
    try:
        run(argv, device, lambda event: None, lambda: False)
    except Terminated:  # SIGTERM or Ctrl-C: stop here; the next run resumes
        raise
    except Exception as exc:
        code, kind, message = classify(exc)
        print(f"[rank {ranks.rank}] {path}: failed ({kind}): {message}", file=sys.stderr, flush=True)
        return record | {"status": "failed", "kind": kind, "exit_code": code, "message": message}
    seconds = round(time.monotonic() - started, 2)
    print(f"[rank {ranks.rank}] {path}: done in {seconds} s", file=sys.stderr, flush=True)
    return record | {"status": "done", "seconds": seconds}


def report(records: list[dict], inputs: list[Path], processes: int, out_dir: Path) -> None:
    """Print the summary and write it as JSON beside the outputs (atomically, like the outputs)."""
    order = {str(p): i for i, p in enumerate(inputs)}
    records = sorted(records, key=lambda r: order[r["input"]])
    counts = {s: sum(r["status"] == s for r in records) for s in ("done", "skipped", "failed")}
    print(
        f"batch: {len(records)} scans on {processes} process{'es' if processes > 1 else ''}: {counts['done']} done, "
        f"{counts['skipped']} skipped (complete output already there), {counts['failed']} failed",
        flush=True,
    )
    for r in records:
        if r["status"] == "failed":
            print(f"  failed: {r['input']}: {r['message']} ({r['kind']})", flush=True)
    summary = out_dir / SUMMARY_FILE
    partial = summary.with_name(f".{SUMMARY_FILE}.partial")
    partial.write_text(json.dumps({"counts": counts, "scans": records}, indent=2), encoding="utf-8")
    os.replace(partial, summary)


def exit_code(records: list[dict]) -> int:
    """0 when no scan failed; else the failures' exit code if they share one (2: input...), else 1."""
    codes = {r["exit_code"] for r in records if r["status"] == "failed"}
    if not codes:
        return EXIT_OK
    return codes.pop() if len(codes) == 1 else 1
