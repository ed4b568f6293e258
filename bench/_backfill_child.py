"""``python -m bench._backfill_child``: one single-run backfill in a fresh process.

Run by ``bench.ratelimit``, several at once against one emulator server, as separate deployments
sharing one provider account would. Uses its own SQLite DAGSTER_HOME under ``--dir`` (the parent
reads the materializations from it afterwards, even if it had to stop this process). Once
Dagster is imported and the instance open it prints "ready" and waits for a line on stdin, so that
all processes start their runs together; it prints one JSON line when the run ends.
"""

# No ``from __future__ import annotations``: nothing here is read by Dagster's annotations.
import argparse
import json
import os
import sys
import time
from pathlib import Path

import dagster as dg

from bench._common import materialize_range
from dagster_gptimage.assets import image_generation_asset
from dagster_gptimage.prompts import PromptTable
from dagster_gptimage.resource import GPTImageResource
from dagster_gptimage.storage import ImageStore

ASSET_NAME = "bench_shared_account"


def prompt_table(n: int, prefix: str) -> PromptTable:
    return PromptTable.from_records(
        [
            {"key": f"{prefix}{i:04d}", "prompt": f"A tide pool at noon, gouache, {prefix} {i}"}
            for i in range(n)
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._backfill_child")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    root = Path(args.dir)
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    table = prompt_table(args.partitions, args.prefix)
    asset = image_generation_asset(name=ASSET_NAME, prompts=table, size="1024x1024")
    resources = {
        "gptimage": GPTImageResource(
            provider="emulator", base_url=args.base_url, max_concurrency=args.concurrency
        ),
        "image_store": ImageStore(base_url=str(root / "store")),
    }
    with dg.DagsterInstance.from_config(str(home)) as instance:
        print("ready", flush=True)
        sys.stdin.readline()
        started = time.time()
        result = materialize_range(asset, resources, instance, table.keys)
        ended = time.time()
        done = len(instance.get_materialized_partitions(asset.key))
    print(
        json.dumps(
            {"success": result.success, "materialized": done, "started": started, "ended": ended}
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
