"""A single-run backfill in its own process, for the crash test to SIGKILL half-way.

``python _crash_child.py BASE_URL DAGSTER_HOME STORE N CONCURRENCY``: materializes the crash asset
(see ``crash_asset``) over all N partitions on the SQLite instance in DAGSTER_HOME, talking HTTP to
the emulator server at BASE_URL.
"""

from __future__ import annotations

import sys

import dagster as dg
from _reliability import QUIET, crash_asset, range_tags

from dagster_gptimage.resource import GPTImageResource
from dagster_gptimage.storage import ImageStore


def main(base_url: str, home: str, store: str, n: str, concurrency: str) -> None:
    asset, table = crash_asset(int(n))
    resources = {
        "gptimage": GPTImageResource(
            provider="emulator", base_url=base_url, max_concurrency=int(concurrency)
        ),
        "image_store": ImageStore(base_url=store),
    }
    with dg.DagsterInstance.from_config(home) as instance:
        dg.materialize(
            [asset],
            resources=resources,
            instance=instance,
            tags=range_tags(table.keys),
            run_config=QUIET,
            raise_on_error=False,
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
