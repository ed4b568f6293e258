"""Benchmark 4: streaming a batch output of more than 1 GB with bounded memory.

A batch of photo-like 3840x2160 PNGs (about 16 MB of base64 per output line) runs on the emulator
server (``bench._server``, a separate process). A fresh child process then reads every result the
way a batch run would: ``BatchAPI.results`` streams the output file line by line, each success's
image is decoded and hashed, and nothing is kept. The first download is cut off mid-body, so the
figure includes a resumed download. The child reports its peak resident memory (``VmHWM``), which
must stay far below the output's size: target < 400 MB for >= 1 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import subprocess
import sys
import time
from typing import Any

import httpx

from bench._common import REPO_ROOT, EmulatorServer, Report
from bench._rss_child import _current_mb, _peak_mb

TARGET_PEAK_MB = 400.0
MIN_OUTPUT_BYTES = 1024**3


def _submit(base_url: str, lines: int, size: str) -> str:
    """Upload and create the batch with plain httpx (the parent must stay out of the figure)."""
    body = "".join(
        json.dumps(
            {
                "custom_id": f"line-{index}",
                "method": "POST",
                "url": "/v1/images/generations",
                "body": {"model": "gpt-image-2", "prompt": f"Harbour, study {index}", "size": size},
            }
        )
        + "\n"
        for index in range(lines)
    )
    with httpx.Client(base_url=base_url, timeout=600) as client:
        uploaded = client.post(
            "/files",
            data={"purpose": "batch"},
            files={"file": ("bench.jsonl", body.encode(), "application/jsonl")},
        )
        uploaded.raise_for_status()
        created = client.post(
            "/batches",
            json={
                "input_file_id": uploaded.json()["id"],
                "endpoint": "/v1/images/generations",
                "completion_window": "24h",
            },
        )
        created.raise_for_status()
        batch_id = created.json()["id"]
        started = time.perf_counter()
        done = client.get(f"/batches/{batch_id}")
        done.raise_for_status()
        print(f"  (server produced the output in {time.perf_counter() - started:.1f} s)")
        if done.json()["status"] != "completed":
            raise RuntimeError(f"batch did not complete: {done.json()}")
        output = client.get(f"/files/{done.json()['output_file_id']}")
        output.raise_for_status()
    return f"{batch_id} {output.json()['bytes']}"


async def _consume(base_url: str, batch_id: str) -> dict[str, Any]:
    from dagster_gptimage._batchapi import BatchAPI
    from dagster_gptimage._batchfile import LineSuccess
    from dagster_gptimage._providers import ProviderSettings

    settings = ProviderSettings.create("openai", base_url=base_url, api_key="sk-bench")
    before = _current_mb()
    started = time.perf_counter()
    successes = image_bytes = 0
    digest = hashlib.sha256()
    async with BatchAPI.connect(settings, wait_initial_s=0.1, wait_max_s=1.0) as api:
        batch = await api.retrieve(batch_id)
        async for result in api.results(batch):
            if isinstance(result, LineSuccess):
                for image in result.images():
                    digest.update(hashlib.sha256(image).digest())
                    image_bytes += len(image)
                successes += 1
    return {
        "rss_before_mb": before,
        "peak_rss_mb": _peak_mb(),
        "wall_s": time.perf_counter() - started,
        "successes": successes,
        "image_bytes": image_bytes,
    }


def _child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_stream --child")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--batch-id", required=True)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_consume(args.base_url, args.batch_id))))


def run(*, quick: bool = False) -> Report:
    report = Report("Batch output streaming: peak memory of a >= 1 GB download (benchmark 4)")
    lines, size = (6, "1024x1024") if quick else (70, "3840x2160")
    label = "batch_stream_quick" if quick else "batch_stream"
    with EmulatorServer(
        args=["--no-auth", "--batch-completion", "0", "--batch-download-faults", "1"]
    ) as server:
        batch_id, output_bytes = _submit(server.base_url, lines, size).split()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.batch_stream",
                "--child",
                "--base-url",
                server.base_url,
                "--batch-id",
                batch_id,
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        stats = server.stats()
    if done.returncode != 0:
        raise RuntimeError(
            f"the streaming child failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    size_mb = int(output_bytes) / 2**20
    report.note(
        f"{lines} lines of {size} photo-like PNG; the first download breaks half-way and resumes "
        "(Range); a fresh child process streams, decodes and hashes every image, keeping none"
    )
    report.add(f"{label}.output_mb", size_mb, "MB")
    report.add(
        f"{label}.big_enough",
        int(int(output_bytes) >= MIN_OUTPUT_BYTES),
        target="1" if not quick else "",
    )
    report.add(f"{label}.lines_read", figures["successes"], note=f"of {lines}")
    report.add(f"{label}.downloads", stats["batch_calls"].get("files.content", 0), note="1 broken")
    report.add(f"{label}.rss_before_mb", figures["rss_before_mb"], "MB", note="after imports")
    report.add(
        f"{label}.peak_rss_mb",
        figures["peak_rss_mb"],
        "MB",
        target=f"< {TARGET_PEAK_MB:.0f} MB",
        met=figures["peak_rss_mb"] < TARGET_PEAK_MB,
    )
    report.add(f"{label}.wall_s", figures["wall_s"], "s")
    report.add(f"{label}.throughput_mb_s", size_mb / max(figures["wall_s"], 1e-9), "MB/s")
    return report


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--child" in argv:
        argv.remove("--child")
        _child(argv)
        return
    parser = argparse.ArgumentParser(prog="python -m bench.batch_stream")
    parser.add_argument("--quick", action="store_true")
    run(quick=parser.parse_args(argv).quick)


if __name__ == "__main__":
    main()
