"""Shared benchmark plumbing: machine facts, the emulator as a separate server process, a
SQLite-backed Dagster home, and the figures every benchmark reports.

The emulator runs in its own process on purpose: with a real provider the images are made on
someone else's machine, so the emulator's rendering must not compete with the run for this
machine's two cores inside one Python process (and its GIL).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

warnings.filterwarnings("ignore", message=".*is currently in beta.*")
warnings.filterwarnings("ignore", message=".*is currently in preview.*")

REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = [
    "QUIET",
    "EmulatorServer",
    "Figure",
    "Report",
    "dagster_home",
    "machine_info",
    "materialize_range",
    "quick_main",
    "range_tags",
    "run_materializations",
]


@dataclass
class Figure:
    """One reported number: ``name`` is stable (the smoke test and RESULTS.md refer to it)."""

    name: str
    value: float | int | str
    unit: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""

    def line(self) -> str:
        shown = f"{self.value:,.3f}" if isinstance(self.value, float) else f"{self.value}"
        parts = [f"{self.name} = {shown}{(' ' + self.unit) if self.unit else ''}"]
        if self.target:
            verdict = "" if self.met is None else (" met" if self.met else " MISSED")
            parts.append(f"[target {self.target}{verdict}]")
        if self.note:
            parts.append(f"({self.note})")
        return "  ".join(parts)


@dataclass
class Report:
    """The figures of one benchmark, printed as they come so a long run shows progress."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, value: float | int | str, unit: str = "", **kwargs: Any) -> Figure:
        figure = Figure(name, value, unit, **kwargs)
        self.figures.append(figure)
        print(f"  {figure.line()}", flush=True)
        return figure

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def markdown(self) -> str:
        rows = ["| figure | value | target | |", "|---|---|---|---|"]
        for f in self.figures:
            shown = f"{f.value:,.3f}" if isinstance(f.value, float) else f"{f.value}"
            verdict = "" if f.met is None else ("met" if f.met else "**missed**")
            rows.append(
                f"| `{f.name}` | {shown} {f.unit} | {f.target} | {verdict} {f.note} |".replace(
                    "  ", " "
                )
            )
        notes = "".join(f"\n- {n}" for n in self.notes)
        return f"### {self.title}\n\n" + "\n".join(rows) + ("\n" + notes if notes else "") + "\n"


def machine_info() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    import dagster

    from dagster_gptimage.version import __version__

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "memory": memory,
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dagster": dagster.__version__,
        "dagster_gptimage": __version__,
    }


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
"""Run config keeping Dagster's per-event console lines out of the measurements' output."""


def quick_main(prog: str, run: Callable[..., Any], argv: Any = None) -> None:
    """The CLI of a benchmark module: ``python -m bench.<name> [--quick]``."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    run(quick=args.quick)


def materialize_range(asset: Any, resources: Mapping[str, Any], instance: Any, keys: Any) -> Any:
    """One run of ``asset`` over ``keys`` (a contiguous range): what a single-run backfill
    launches; failures are in the result, not raised."""
    import dagster as dg

    return dg.materialize(
        [asset],
        resources=resources,
        instance=instance,
        tags=range_tags(keys),
        run_config=QUIET,
        raise_on_error=False,
    )


def range_tags(keys: Sequence[str]) -> dict[str, str]:
    """The tags a single-run backfill puts on its run: the partition range it covers."""
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    return {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}


def run_materializations(instance: Any, run_id: str) -> list[Any]:
    """Every AssetMaterialization one run recorded (paged: Dagster caps one fetch at 10,000)."""
    import dagster as dg

    found: list[Any] = []
    cursor = None
    while True:
        page = instance.get_records_for_run(
            run_id, cursor=cursor, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=1000
        )
        found.extend(record.asset_materialization for record in page.records)
        if not page.has_more:
            return found
        cursor = page.cursor


@contextlib.contextmanager
def dagster_home(prefix: str = "gptimage-bench-") -> Iterator[tuple[Path, Any]]:
    """A fresh DAGSTER_HOME with the default (SQLite) storage, and its DagsterInstance."""
    import dagster as dg

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        home = Path(tmp) / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        previous = os.environ.get("DAGSTER_HOME")
        os.environ["DAGSTER_HOME"] = str(home)
        try:
            with dg.DagsterInstance.from_config(str(home)) as instance:
                yield home, instance
        finally:
            if previous is None:
                os.environ.pop("DAGSTER_HOME", None)
            else:
                os.environ["DAGSTER_HOME"] = previous


def _drain(stream: Any) -> None:
    """Keep reading the server's output so a chatty server never blocks on a full pipe."""
    with contextlib.suppress(OSError, ValueError):
        for _line in stream:
            pass


class EmulatorServer:
    """The emulator server in a child process on a free loopback port: ``bench._server`` (photo-like
    PNGs, see there) by default, or ``dagster_gptimage.emulator`` itself."""

    def __init__(
        self,
        *,
        options: Mapping[str, Any] | None = None,
        args: Sequence[str] = (),
        module: str = "bench._server",
    ) -> None:
        self.options = dict(options or {})
        self.args = list(args)
        self.module = module
        self.process: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> EmulatorServer:
        command = [
            sys.executable,
            "-m",
            self.module,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-level",
            "warning",
            *self.args,
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 30
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"on (http://\S+)", line)
            if found:
                self.base_url = found.group(1)
                break
        if not self.base_url:
            self.__exit__(None, None, None)
            raise RuntimeError("the emulator server did not start:\n" + "".join(lines))
        threading.Thread(target=_drain, args=(self.process.stdout,), daemon=True).start()
        self._wait_ready()
        if self.options:
            self.configure(**self.options)
        return self

    @property
    def origin(self) -> str:
        return self.base_url.removesuffix("/v1")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{self.origin}/_emulator/stats", timeout=2).raise_for_status()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def configure(self, **changes: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.origin}/_emulator/config", json=changes, timeout=10)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        httpx.post(f"{self.origin}/_emulator/reset", timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.origin}/_emulator/stats", timeout=30)
        response.raise_for_status()
        return response.json()

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the server process has used (Linux /proc), for attribution."""
        if self.process is None:
            return None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def __exit__(self, *exc_info: object) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
