"""``python -m bench``: run every benchmark and print its figures (``make bench``).

``python -m bench NAME ...`` runs only the named benchmarks (as does ``--only NAME``);
``--quick`` runs reduced sizes (a smoke check, seconds instead of minutes); ``--markdown PATH`` also writes the figures as Markdown tables (for bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import backfill, batch_stream, cache, gallery, overhead, production, ratelimit
from bench._common import Report, machine_info

BENCHMARKS: dict[str, Callable[..., Report]] = {
    "backfill": backfill.run,
    "overhead": overhead.run,
    "cache": cache.run,
    "ratelimit": ratelimit.run,
    "batch_stream": batch_stream.run,
    "gallery": gallery.run,
    "production": production.run,
}


def _load() -> str:
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--quick", action="store_true", help="reduced sizes (smoke check)")
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHMARKS), help="run only these (repeatable)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the figures as Markdown here")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}"
        )

    info = machine_info()
    print("dagster-gptimage benchmarks" + (" (quick)" if args.quick else ""))
    for key, value in info.items():
        print(f"  {key}: {value}")
    print(f"  load average at start (1/5/15 min): {_load()}", flush=True)
    reports: list[Report] = []
    started = time.perf_counter()
    for name in [*args.names, *(args.only or [])] or list(BENCHMARKS):
        print(f"\n== {name} ==", flush=True)
        reports.append(BENCHMARKS[name](quick=args.quick))
    total = time.perf_counter() - started
    print(f"\nall benchmarks: {total:.1f} s; load average at end: {_load()}")
    missed = [f.name for r in reports for f in r.figures if f.met is False]
    print("targets missed: " + (", ".join(missed) if missed else "none"))
    if args.markdown:
        machine = "\n".join(f"- {key}: {value}" for key, value in info.items())
        body = "\n".join(report.markdown() for report in reports)
        args.markdown.write_text(
            f"## Machine\n\n{machine}\n- load average at end: {_load()}\n\n## Figures\n\n{body}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
