"""``python -m dagster_gptimage.emulator``: serve the emulator on a loopback port."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from ._asgi import check_loopback, serve
from ._config import FAULT_KINDS
from ._core import Emulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dagster_gptimage.emulator",
        description="Serve an offline emulator of the GPT image API (loopback only).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port (default 8089)")
    parser.add_argument("--profile", choices=("openai", "azure", "gateway"), default="openai")
    parser.add_argument("--latency", type=float, dest="latency_s", help="fixed latency in seconds")
    parser.add_argument("--latency-distribution", choices=("fixed", "lognormal"))
    parser.add_argument("--latency-scale", type=float, help="multiplies lognormal latencies")
    parser.add_argument("--latency-p50", type=float, dest="latency_p50_s")
    parser.add_argument("--latency-p95", type=float, dest="latency_p95_s")
    for name in (
        "rate-limit",
        "insufficient-quota",
        "server-error",
        "reset",
        "truncate",
        "timeout",
        "moderation",
    ):
        parser.add_argument(f"--{name}-rate", type=float, help=f"probability of a {name} fault")
    parser.add_argument(
        "--retry-after", type=float, dest="retry_after_s", help="retry-after of 429s"
    )
    limits = parser.add_argument_group(
        "account rate limits", "token buckets shared by every client of this server"
    )
    limits.add_argument("--images-per-minute", type=float, help="IPM limit (default: none)")
    limits.add_argument(
        "--images-burst", type=float, help="images a full bucket holds (default: one minute's)"
    )
    limits.add_argument(
        "--tokens-per-minute", type=float, help="image output tokens per minute (default: none)"
    )
    limits.add_argument(
        "--tokens-burst", type=float, help="tokens a full bucket holds (default: one minute's)"
    )
    parser.add_argument("--max-recorded", type=int, help="requests kept in stats (default 500)")
    parser.add_argument("--hang", type=float, dest="hang_s", help="seconds a 'timeout' fault hangs")
    parser.add_argument("--moderation-word", help="prompts containing it are blocked")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--no-auth", action="store_true", help="accept requests without credentials"
    )
    parser.add_argument("--azure-model", help="model behind Azure deployments")
    parser.add_argument(
        "--script", help=f"comma-separated faults for the first requests ({', '.join(FAULT_KINDS)})"
    )
    batch = parser.add_argument_group("Batch API")
    batch.add_argument(
        "--batch-completion", type=float, dest="batch_completion_s", help="seconds to `completed`"
    )
    batch.add_argument(
        "--batch-window", type=float, dest="batch_window_s", help="seconds before a batch expires"
    )
    batch.add_argument("--batch-failure-rate", type=float, help="fraction of lines failing (500)")
    batch.add_argument("--batch-max-lines", type=int, help="lines per input file (50000)")
    batch.add_argument("--batch-max-bytes", type=int, help="bytes per input file (200 MB)")
    batch.add_argument(
        "--batch-download-faults", type=int, help="the first N file downloads break mid-body"
    )
    batch.add_argument("--batch-download-fault", choices=("truncate", "reset"))
    batch.add_argument(
        "--batch-download-fault-at", type=float, help="where a broken download stops (0-1)"
    )
    parser.add_argument("--log-level", default="info")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    options: dict[str, Any] = {
        key: value
        for key, value in vars(args).items()
        if value is not None and key not in ("host", "port", "no_auth", "script", "log_level")
    }
    if args.no_auth:
        options["require_auth"] = False
    try:
        check_loopback(args.host)
        emulator = Emulator(**options)
        if args.script:
            emulator.script(kind.strip() for kind in args.script.split(",") if kind.strip())
    except (ValueError, ValidationError) as error:
        parser.error(str(error))
    serve(emulator, args.host, args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
