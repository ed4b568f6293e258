"""The emulator's Files and Batches API: validation, timeline, outputs, billing, faults, schemas."""

from __future__ import annotations

import base64
import contextlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from _emulator_helpers import AUTH, png_bytes
from PIL import Image

from dagster_gptimage.emulator import IN_PROCESS_BASE_URL, Emulator, run_server_in_thread
from dagster_gptimage.emulator.__main__ import _parser
from dagster_gptimage.emulator._batches import draw

pytestmark = pytest.mark.anyio
GENERATIONS = "/v1/images/generations"


@cache
def _batch_spec(reference_dir: Path) -> dict[str, Any]:
    path = reference_dir / "openai-batches-files-openapi.json"
    if not path.is_file():
        pytest.skip(f"{path} not present: the Batch API schema checks need it")
    return json.loads(path.read_text())


def assert_schema(reference_dir: Path, name: str, payload: Any) -> None:
    spec = _batch_spec(reference_dir)
    schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(payload), key=str)
    assert not errors, [f"{list(error.absolute_path)}: {error.message}" for error in errors]


def line(custom_id: str, prompt: str = "A lighthouse", url: str = GENERATIONS, **body: Any) -> str:
    payload = {"model": "gpt-image-2", "prompt": prompt, "size": "1024x1024", "quality": "low"}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": url, "body": {**payload, **body}}
    )


def jsonl(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


@contextlib.asynccontextmanager
async def client_for(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url=IN_PROCESS_BASE_URL, headers=AUTH
    ) as client:
        yield client


async def upload(client: httpx.AsyncClient, content: bytes) -> httpx.Response:
    return await client.post(
        "/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", content, "text/plain")}
    )


async def submit(client: httpx.AsyncClient, content: bytes, **extra: Any) -> dict[str, Any]:
    uploaded = await upload(client, content)
    assert uploaded.status_code == 200, uploaded.text
    created = await client.post(
        "/batches",
        json={
            "input_file_id": uploaded.json()["id"],
            "endpoint": GENERATIONS,
            "completion_window": "24h",
            **extra,
        },
    )
    assert created.status_code == 200, created.text
    return created.json()


async def lines_of(client: httpx.AsyncClient, file_id: Any) -> list[dict[str, Any]]:
    assert file_id is not None
    response = await client.get(f"/files/{file_id}/content")
    assert response.status_code == 200
    return [json.loads(item) for item in response.content.splitlines()]


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(batch_completion_s=100.0, moderation_word="forbidden")


async def test_batch_runs_through_its_statuses(emulator: Emulator, reference_dir: Path) -> None:
    content = jsonl(*(line(f"c{i}", f"A lighthouse {i}") for i in range(10)))
    async with client_for(emulator) as client:
        uploaded = (await upload(client, content)).json()
        assert_schema(reference_dir, "OpenAIFile", uploaded)
        assert (uploaded["purpose"], uploaded["bytes"]) == ("batch", len(content))
        assert (await client.get(f"/files/{uploaded['id']}")).json() == uploaded
        batch = await submit(client, content, metadata={"run": "r1"})
        assert_schema(reference_dir, "Batch", batch)
        seen = [batch["status"]]
        polled = batch
        counts = []
        for _ in range(5):
            emulator.advance_clock(20.0)
            polled = (await client.get(f"/batches/{batch['id']}")).json()
            assert_schema(reference_dir, "Batch", polled)
            seen.append(polled["status"])
            counts.append(polled["request_counts"]["completed"])
        output = await lines_of(client, polled["output_file_id"])
    assert seen == [
        "validating",
        "in_progress",
        "in_progress",
        "in_progress",
        "in_progress",
        "completed",
    ]
    assert counts == sorted(counts)
    assert 0 < counts[0] < 10
    assert counts[-1] == 10
    assert polled["request_counts"] == {"total": 10, "completed": 10, "failed": 0}
    assert "error_file_id" not in polled
    assert polled["metadata"] == {"run": "r1"}
    assert polled["usage"]["output_tokens"] == 10 * 196
    assert sorted(item["custom_id"] for item in output) == sorted(f"c{i}" for i in range(10))
    first = output[0]
    assert first["error"] is None
    assert first["id"].startswith("batch_req_")
    body = first["response"]["body"]
    assert first["response"]["status_code"] == 200
    assert body["usage"]["output_tokens_details"]["image_tokens"] == 196
    image = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    assert image.size == (1024, 1024)
    stats = emulator.stats
    assert (stats.sync_requests, stats.billed_requests) == (0, 0)
    assert (stats.batch_lines_billed, stats.batch_images_billed) == (10, 10)
    assert stats.batch_calls["batches.create"] == 1


async def test_failing_lines_go_to_the_error_file(emulator: Emulator) -> None:
    emulator.configure(batch_failure_rate=0.5, batch_completion_s=0.0)
    content = jsonl(
        line("blocked", "A forbidden picture"),
        line("bad-size", size="1000x1000"),
        *(line(f"ok{i}", f"Harbour {i}") for i in range(20)),
    )
    async with client_for(emulator) as client:
        batch = await submit(client, content)
        done = (await client.get(f"/batches/{batch['id']}")).json()
        errors = {item["custom_id"]: item for item in await lines_of(client, done["error_file_id"])}
        output = await lines_of(client, done["output_file_id"])
    assert done["status"] == "completed"
    blocked = errors.pop("blocked")["response"]
    assert blocked["status_code"] == 400
    assert blocked["body"]["error"]["code"] == "moderation_blocked"
    assert errors.pop("bad-size")["response"]["body"]["error"]["param"] == "size"
    seed = emulator.config.seed
    expected = {f"ok{i}" for i in range(20) if draw(seed, 1, f"ok{i}") < 0.5}
    assert set(errors) == expected, "a line's first submission fails by the seeded draw"
    assert 3 <= len(errors) <= 17, "about half of the 20 valid lines fail"
    assert {item["response"]["status_code"] for item in errors.values()} == {500}
    counts = done["request_counts"]
    assert counts == {"total": 22, "completed": len(output), "failed": len(errors) + 2}
    assert emulator.stats.batch_lines_billed == len(output)


async def test_expiry_keeps_the_lines_done(emulator: Emulator, reference_dir: Path) -> None:
    emulator.configure(batch_window_s=50.0)
    content = jsonl(*(line(f"c{i}") for i in range(8)))
    async with client_for(emulator) as client:
        batch = await submit(client, content)
        emulator.advance_clock(60.0)
        expired = (await client.get(f"/batches/{batch['id']}")).json()
        output = await lines_of(client, expired["output_file_id"])
        errors = await lines_of(client, expired["error_file_id"])
    assert_schema(reference_dir, "Batch", expired)
    # 50 s of 100: in progress from 10 s to 90 s, so half of the lines ran.
    assert expired["status"] == "expired"
    assert expired["expired_at"] is not None
    assert expired["request_counts"] == {"total": 8, "completed": 4, "failed": 4}
    assert [item["custom_id"] for item in output] == ["c0", "c1", "c2", "c3"]
    assert [item["error"]["code"] for item in errors] == ["batch_expired"] * 4
    assert all(item["response"] is None for item in errors)
    assert emulator.stats.batch_lines_billed == 4


async def test_cancel_keeps_partial_output(emulator: Emulator) -> None:
    content = jsonl(*(line(f"c{i}") for i in range(10)))
    async with client_for(emulator) as client:
        batch = await submit(client, content)
        emulator.advance_clock(30.0)
        cancelling = (await client.post(f"/batches/{batch['id']}/cancel")).json()
        emulator.advance_clock(5.0)
        still = (await client.get(f"/batches/{batch['id']}")).json()
        emulator.advance_clock(10.0)
        cancelled = (await client.get(f"/batches/{batch['id']}")).json()
        again = await client.post(f"/batches/{batch['id']}/cancel")
        errors = await lines_of(client, cancelled["error_file_id"])
    assert (cancelling["status"], still["status"], cancelled["status"]) == (
        "cancelling",
        "cancelling",
        "cancelled",
    )
    assert cancelled["request_counts"] == {"total": 10, "completed": 2, "failed": 8}
    assert {item["error"]["code"] for item in errors} == {"batch_cancelled"}
    assert again.status_code == 409
    assert emulator.stats.batch_lines_billed == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json\n", "Line 1: this line is not parseable"),
        (jsonl(line("a"), line("a")), "Line 2: the custom_id 'a' is used more than once"),
        (jsonl(line("a", url="/v1/chat/completions")), "'url' must be one of"),
        (
            jsonl(json.dumps({"custom_id": "a", "method": "GET", "url": GENERATIONS, "body": {}})),
            "'method' must be 'POST'",
        ),
        (jsonl(json.dumps({"custom_id": "a", "method": "POST", "url": GENERATIONS})), "'body'"),
    ],
)
async def test_upload_refuses_bad_lines(emulator: Emulator, content: bytes, message: str) -> None:
    async with client_for(emulator) as client:
        response = await upload(client, content)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


async def test_upload_limits(emulator: Emulator) -> None:
    emulator.configure(batch_max_lines=3, batch_max_bytes=2000)
    async with client_for(emulator) as client:
        too_many = await upload(client, jsonl(*(line(f"c{i}") for i in range(4))))
        too_big = await upload(client, jsonl(line("a", "x" * 2500)))
        fits = await upload(client, jsonl(*(line(f"c{i}") for i in range(3))))
    assert too_many.json()["error"]["code"] == "too_many_requests"
    assert too_big.json()["error"]["code"] == "file_too_large"
    assert fits.status_code == 200


async def test_edit_lines_take_data_urls(emulator: Emulator) -> None:
    emulator.configure(batch_completion_s=0.0)
    encoded = base64.b64encode(png_bytes((256, 256))).decode()
    edit = line(
        "e1",
        "Watercolour",
        url="/v1/images/edits",
        images=[{"image_url": f"data:image/png;base64,{encoded}"}],
        size="1024x1536",
    )
    async with client_for(emulator) as client:
        batch = await submit(client, jsonl(edit), endpoint="/v1/images/edits")
        done = (await client.get(f"/batches/{batch['id']}")).json()
        [result] = await lines_of(client, done["output_file_id"])
    data = base64.b64decode(result["response"]["body"]["data"][0]["b64_json"])
    assert Image.open(io.BytesIO(data)).size == (1024, 1536)


async def test_lines_for_another_endpoint_fail_the_batch(emulator: Emulator) -> None:
    emulator.configure(batch_completion_s=0.0)
    async with client_for(emulator) as client:
        batch = await submit(client, jsonl(line("a")), endpoint="/v1/images/edits")
        uploaded = {"id": batch["input_file_id"]}
        failed = (await client.get(f"/batches/{batch['id']}")).json()
        bad_window = await client.post(
            "/batches",
            json={
                "input_file_id": uploaded["id"],
                "endpoint": GENERATIONS,
                "completion_window": "1h",
            },
        )
    assert failed["status"] == "failed"
    assert failed["errors"]["data"][0]["line"] == 1
    assert "output_file_id" not in failed
    assert bad_window.json()["error"]["param"] == "completion_window"
    assert emulator.stats.batch_lines_billed == 0


async def test_list_pages_newest_first(emulator: Emulator, reference_dir: Path) -> None:
    async with client_for(emulator) as client:
        ids = [(await submit(client, jsonl(line(f"c{i}"))))["id"] for i in range(5)]
        first = (await client.get("/batches", params={"limit": 2})).json()
        second = (
            await client.get("/batches", params={"limit": 2, "after": first["last_id"]})
        ).json()
        rest = (await client.get("/batches", params={"after": second["last_id"]})).json()
        bad = await client.get("/batches", params={"limit": 0})
    assert_schema(reference_dir, "ListBatchesResponse", first)
    listed = [b["id"] for page in (first, second, rest) for b in page["data"]]
    assert listed == ids[::-1]
    assert (first["has_more"], second["has_more"], rest["has_more"]) == (True, True, False)
    assert bad.status_code == 400


async def test_download_faults_and_ranges(emulator: Emulator) -> None:
    emulator.configure(batch_completion_s=0.0, batch_download_faults=1)
    async with client_for(emulator) as client:
        batch = await submit(client, jsonl(*(line(f"c{i}") for i in range(3))))
        done = (await client.get(f"/batches/{batch['id']}")).json()
        url = f"/files/{done['output_file_id']}/content"
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(url)
        whole = (await client.get(url)).content
        tail = await client.get(url, headers={"Range": "bytes=100-"})
        emulator.configure(batch_download_faults=1, batch_download_fault="reset")
        with pytest.raises(httpx.ReadError):
            await client.get(url)
    assert tail.status_code == 206
    assert tail.content == whole[100:]
    assert tail.headers["content-range"] == f"bytes 100-{len(whole) - 1}/{len(whole)}"


async def test_batch_api_needs_auth_and_known_ids(emulator: Emulator) -> None:
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url=IN_PROCESS_BASE_URL
    ) as anonymous:
        assert (await anonymous.get("/batches")).status_code == 401
    async with client_for(emulator) as client:
        assert (await client.get("/batches/batch_nope")).status_code == 404
        assert (await client.get("/files/file-nope/content")).status_code == 404


async def test_reset_forgets_batches(emulator: Emulator) -> None:
    async with client_for(emulator) as client:
        batch = await submit(client, jsonl(line("a")))
        emulator.reset()
        assert (await client.get(f"/batches/{batch['id']}")).status_code == 404


# --- over real HTTP ----------------------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(batch_completion_s=0.0, batch_download_faults=2)
    with run_server_in_thread(emulator) as base_url:
        yield emulator, base_url


@pytest.mark.parametrize("fault", ["truncate", "reset"])
async def test_download_faults_over_http(served: tuple[Emulator, str], fault: str) -> None:
    emulator, base_url = served
    emulator.configure(batch_download_fault=fault, batch_download_faults=1)
    async with httpx.AsyncClient(base_url=base_url, headers=AUTH) as client:
        batch = await submit(client, jsonl(*(line(f"c{i}") for i in range(3))))
        done = (await client.get(f"/batches/{batch['id']}")).json()
        url = f"/files/{done['output_file_id']}/content"
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.get(url)
        output = await lines_of(client, done["output_file_id"])
    assert [item["custom_id"] for item in output] == ["c0", "c1", "c2"]


def test_cli_flags_reach_the_config() -> None:
    args = _parser().parse_args(
        ["--batch-completion", "3", "--batch-failure-rate", "0.2", "--batch-download-faults", "2"]
    )
    options = {k: v for k, v in vars(args).items() if k.startswith("batch") and v is not None}
    emulator = Emulator(**options)
    assert emulator.config.batch_completion_s == 3.0
    assert emulator.config.batch_failure_rate == 0.2
    assert emulator.config.batch_download_faults == 2
