"""Secrets: a recognisable API key must not end up anywhere Dagster or we keep things.

A real provider configuration (provider="openai", key from ``dg.EnvVar``) talks HTTP to an emulator
server on loopback that checks the key. After a backfill, and after a run failing with 401 because
the server expects another key, the key must occur in none of: the Dagster home's files (SQLite run
and event storage, compressed snapshots included, compute logs), the event records, metadata, the
sidecars, the errors raised and their pickles, reprs.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import traceback
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from _reliability import (
    SIZE,
    failure_metadata,
    prompt_table,
    run_range,
)
from dagster._serdes import serialize_value

from dagster_gptimage.assets import image_generation_asset
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.emulator import Emulator, run_server_in_thread
from dagster_gptimage.errors import AuthenticationError, DefinitionError
from dagster_gptimage.resource import GPTImageResource
from dagster_gptimage.storage import ImageStore

ENV_VAR = "GPTIMAGE_RELIABILITY_API_KEY"


@pytest.fixture
def key() -> str:
    return f"sk-test-SECRET-{uuid.uuid4().hex}"


def _needles(key: str) -> list[bytes]:
    # The key, and its random part without the last four characters (which a provider's masked
    # "sk-tes****abcd" may legitimately show).
    return [key.encode(), key.rsplit("-", 1)[1][:-4].encode()]


def _leaks(blob: bytes | str, key: str) -> bool:
    data = blob.encode() if isinstance(blob, str) else blob
    return any(needle in data for needle in _needles(key))


def _sqlite_values(path: Path) -> Iterator[bytes]:
    """Every text and blob cell of a SQLite file, zlib-decompressed where it is compressed
    (Dagster compresses snapshots), so a key cannot hide in a compressed column."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                for cell in row:
                    if isinstance(cell, str):
                        cell = cell.encode()
                    if not isinstance(cell, bytes):
                        continue
                    yield cell
                    try:
                        inflated = zlib.decompress(cell)
                    except zlib.error:
                        continue
                    yield inflated
    finally:
        connection.close()


def _files_with(root: Path, key: str) -> list[str]:
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        leaked = _leaks(data, key)
        if not leaked and data.startswith(b"SQLite format 3"):
            leaked = any(_leaks(cell, key) for cell in _sqlite_values(path))
        if leaked:
            found.append(str(path.relative_to(root)))
    return found


def _error_texts(error: BaseException) -> list[str | bytes]:
    return [
        str(error),
        repr(error),
        repr(error.args),
        repr(vars(error)),
        "".join(traceback.format_exception(error)),
        pickle.dumps(error),
    ]


@pytest.fixture
def server(key: str) -> Iterator[tuple[Emulator, str]]:
    emulator = Emulator(api_key=key, require_auth=True)
    with run_server_in_thread(emulator) as url:
        yield emulator, url


@pytest.mark.slow
def test_the_api_key_is_nowhere_after_a_backfill_and_a_401(
    key: str,
    server: tuple[Emulator, str],
    dagster_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator, url = server
    monkeypatch.setenv(ENV_VAR, key)
    gptimage = GPTImageResource(provider="openai", base_url=url, api_key=dg.EnvVar(ENV_VAR))
    store = tmp_path / "store"
    resources = {"gptimage": gptimage, "image_store": ImageStore(base_url=str(store))}
    table = prompt_table(5)
    asset = image_generation_asset(name="secret_ok", prompts=table, size=SIZE)
    failing_table = prompt_table(3, prefix="f")
    failing = image_generation_asset(name="secret_401", prompts=failing_table, size=SIZE)

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        ok = run_range([asset], resources, table.keys, instance)
        assert ok.success
        assert emulator.stats.billed_requests == 5
        emulator.configure(api_key=f"sk-other-{uuid.uuid4().hex}")
        denied = run_range([failing], resources, failing_table.keys, instance)
        assert not denied.success
        failed = failure_metadata(denied)
        assert {d["reason"] for d in failed.values()} == {"authentication"}

        records = [record for result in (ok, denied) for record in instance.all_logs(result.run_id)]
        assert len(records) > 10
        for record in records:
            assert not _leaks(serialize_value(record), key)
        for result in (ok, denied):
            run = instance.get_run_by_id(result.run_id)
            assert run is not None
            assert not _leaks(serialize_value(run), key)

    # The Dagster home (run and event SQLite files, snapshots, compute logs) and the store.
    assert list((dagster_home / "storage").rglob("compute_logs/*"))
    assert _files_with(dagster_home, key) == []
    assert list(store.rglob("*.json"))
    assert _files_with(store, key) == []
    assert not _leaks(repr(gptimage), key)

    # Errors raised straight from the client for the same 401.
    client = GPTImageClient(provider="openai", base_url=url, api_key=key)
    with client, pytest.raises(AuthenticationError) as raised:
        client.generate_sync("a lighthouse", size=SIZE)
    assert raised.value.status_code == 401
    for text in _error_texts(raised.value):
        assert not _leaks(text, key)
    assert not _leaks(repr(client), key)


def test_a_literal_api_key_stays_out_of_the_run_storage(
    key: str, server: tuple[Emulator, str], dagster_home: Path, tmp_path: Path
) -> None:
    """Dagster stores a ConfigurableResource's literal field values in the job snapshot of every
    run, so a literal key is refused when the resource is defined, before any run exists; the same
    key through dg.EnvVar runs and is stored nowhere."""
    _emulator, url = server
    with pytest.raises(DefinitionError, match=r"dg\.EnvVar") as refused:
        GPTImageResource(provider="openai", base_url=url, api_key=key)
    assert refused.value.field == "api_key"
    for text in _error_texts(refused.value):
        assert not _leaks(text, key)

    os.environ[ENV_VAR] = key
    try:
        resources = {
            "gptimage": GPTImageResource(
                provider="openai", base_url=url, api_key=dg.EnvVar(ENV_VAR)
            ),
            "image_store": ImageStore(base_url=str(tmp_path / "store")),
        }
        table = prompt_table(2)
        asset = image_generation_asset(name="secret_literal", prompts=table, size=SIZE)
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            assert run_range([asset], resources, table.keys, instance).success
    finally:
        os.environ.pop(ENV_VAR, None)
    assert _files_with(dagster_home, key) == []
