"""`facekd repro`: `dvc repro` with a per-stage time table at the end.

DVC records no stage durations, and users compare a run's timings with the README's, which were
taken on other CPUs: so the table names the CPU and the core count it was measured on.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

RUNNING = re.compile(r"Running stage '([^']+)'")
SKIPPED = re.compile(r"Stage '([^']+)' didn't change, skipping")


@dataclass(frozen=True)
class StageTime:
    stage: str
    ran: bool
    seconds: float  # from DVC's "Running stage" line to the next stage's line (caching included)


def stage_times(timed_lines: list[tuple[float, str]], finished_at: float) -> list[StageTime]:
    """The stages of a `dvc repro` output, each timed until the next stage's line (or the end)."""
    marks: list[tuple[float, str, bool]] = []
    for at, line in timed_lines:
        if match := RUNNING.search(line):
            marks.append((at, match.group(1), True))
        elif match := SKIPPED.search(line):
            marks.append((at, match.group(1), False))
    ends = [at for at, _, _ in marks[1:]] + [finished_at]
    return [StageTime(stage, ran, end - at if ran else 0.0) for (at, stage, ran), end in zip(marks, ends)]


def cpu_name() -> str:
    """The CPU model as lscpu reports it, from /proc/cpuinfo (Linux) or the platform module."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "unknown CPU"


def _dvc_executable() -> str:
    """DVC from this environment (a virtualenv need not be activated), else from PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.is_file() else "dvc"


@click.command("repro", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def repro(context: click.Context) -> None:
    """Run `dvc repro [ARGS]` and print how long each stage took, on which CPU."""
    started = time.perf_counter()
    env = os.environ | {"PYTHONUNBUFFERED": "1"}  # DVC's stage lines must arrive when they happen
    timed_lines: list[tuple[float, str]] = []
    process = subprocess.Popen(
        [_dvc_executable(), "repro", *context.args],
        stdout=subprocess.PIPE, text=True, env=env, bufsize=1,
    )
    assert process.stdout is not None
    for line in process.stdout:
        timed_lines.append((time.perf_counter(), line))
        sys.stdout.write(line)
        sys.stdout.flush()
    status = process.wait()
    finished = time.perf_counter()
    times = stage_times(timed_lines, finished)
    if times:
        click.echo(f"\nstage times on {cpu_name()} ({os.cpu_count()} cores):")
        width = max(len(entry.stage) for entry in [*times, StageTime("total", True, 0.0)])
        for entry in times:
            shown = f"{entry.seconds:8.1f} s" if entry.ran else "   (unchanged)"
            click.echo(f"  {entry.stage:<{width}}  {shown}")
        click.echo(f"  {'total':<{width}}  {finished - started:8.1f} s")
    if status != 0:
        raise click.ClickException(f"dvc repro failed (exit status {status})")
