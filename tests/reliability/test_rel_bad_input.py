"""Bad input, fuzzed: every malformed request, prompt table or input image is refused with an error
that names the offending field, and nothing is sent (the emulator counts every request).
"""

from __future__ import annotations

import io
import json
import re
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from _reliability import SIZE, emulator_resources, run_range, unique
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from dagster_gptimage.assets import image_generation_asset
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.emulator import Emulator, get_emulator
from dagster_gptimage.errors import InvalidImageError, InvalidRequestError
from dagster_gptimage.images import MAX_IMAGE_PIXELS
from dagster_gptimage.models import MODEL_SPECS, REQUEST_FIELDS
from dagster_gptimage.prompts import PromptTable, PromptTableError

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def emulator() -> Emulator:
    return get_emulator(unique("fuzz"))


@pytest.fixture(scope="module")
def client(emulator: Emulator) -> Iterator[GPTImageClient]:
    with GPTImageClient(provider="emulator", emulator=emulator, max_retries=0) as client:
        yield client


@pytest.fixture(autouse=True)
def _nothing_sent(emulator: Emulator) -> Iterator[None]:
    before = emulator.stats.requests
    yield
    assert emulator.stats.requests == before, "a refused input reached the provider"


def _text_except(*allowed: str) -> st.SearchStrategy[str]:
    return st.text(max_size=20).filter(lambda value: value not in allowed)


def _bad_sizes() -> st.SearchStrategy[Any]:
    side = st.integers(min_value=1, max_value=240).map(lambda k: 16 * k)
    return st.one_of(
        # not multiples of 16
        st.tuples(side, st.integers(1, 15), side).map(lambda t: (t[0] + t[1], t[2])),
        # long side over 3840
        st.tuples(st.integers(241, 400).map(lambda k: 16 * k), side),
        # flatter than 3:1
        st.tuples(st.integers(1, 60).map(lambda k: 16 * k)).map(lambda t: (t[0] * 4, t[0])),
        # fewer than 655,360 pixels
        st.tuples(st.integers(1, 40), st.integers(1, 40)).map(lambda t: (16 * t[0], 16 * t[1])),
    ).map(lambda wh: f"{wh[0]}x{wh[1]}") | st.one_of(
        st.sampled_from(["16:9", "1:1", "4:3", "huge", "1024X1024", "1024 x 1024", ""]),
        _text_except("auto").filter(lambda s: not re.fullmatch(r"\d+x\d+", s)),
        st.integers(),
        st.lists(st.integers(), max_size=2),
    )


BAD_PARAMS: dict[str, st.SearchStrategy[Any]] = {
    "size": _bad_sizes(),
    "quality": _text_except("low", "medium", "high", "auto") | st.integers(),
    "n": st.integers(max_value=0) | st.integers(min_value=11) | st.sampled_from(["two", "1.5"]),
    "output_format": _text_except("png", "jpeg", "webp"),
    "output_compression": st.integers(max_value=-1) | st.integers(min_value=101),
    "background": st.just("transparent") | _text_except("transparent", "opaque", "auto"),
    "moderation": _text_except("low", "auto"),
    "input_fidelity": st.sampled_from(["high", "low"]),
    "aspect_ratio": st.sampled_from(["16:9", "1:1"]) | st.text(min_size=1, max_size=10),
    "resolution": st.sampled_from(["1K", "2K", "4K"]),
    "model": _text_except(*MODEL_SPECS),
}
UNKNOWN_NAMES = st.from_regex(r"[a-z][a-z_]{0,15}", fullmatch=True).filter(
    lambda name: name not in REQUEST_FIELDS and name != "prompt"
)


@FUZZ
@given(data=st.data(), field=st.sampled_from(sorted(BAD_PARAMS)))
def test_a_bad_request_parameter_is_named_and_never_sent(
    client: GPTImageClient, data: st.DataObject, field: str
) -> None:
    value = data.draw(BAD_PARAMS[field], label=field)
    params: dict[str, Any] = {field: value}
    if field == "output_compression":
        params["output_format"] = "jpeg"
    with pytest.raises(InvalidRequestError) as raised:
        client.generate_sync("a lighthouse", **params)
    assert raised.value.field == field
    assert field in str(raised.value)


@FUZZ
@given(name=UNKNOWN_NAMES, value=st.none() | st.integers() | st.text(max_size=10))
def test_an_unknown_parameter_is_named_and_never_sent(
    client: GPTImageClient, name: str, value: Any
) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        client.generate_sync("a lighthouse", **{name: value})
    assert raised.value.field == name
    assert name in str(raised.value)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@FUZZ
@given(
    prompt=st.text(max_size=40)
    | st.just(" " * 5)
    | st.integers(32_001, 33_000).map(lambda n: "p" * n),
    params=st.dictionaries(st.sampled_from(REQUEST_FIELDS) | UNKNOWN_NAMES, JSONISH, max_size=4),
)
def test_any_parameters_are_valid_or_refused_by_name(
    client: GPTImageClient, prompt: str, params: dict[str, Any]
) -> None:
    error = _build_error(client, prompt, params)
    assume(error is not None)  # a valid request has nothing to check here
    assert error is not None
    assert error.field in {*params, "prompt"}
    with pytest.raises(InvalidRequestError):
        client.generate_sync(prompt, **params)  # refused again, before any request


def _build_error(
    client: GPTImageClient, prompt: str, params: dict[str, Any]
) -> InvalidRequestError | None:
    try:
        client.build_generate(prompt, **params)
    except InvalidRequestError as error:
        return error
    return None


# --- prompt tables ------------------------------------------------------------------------------

SAFE_KEYS = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,11}", fullmatch=True)
UNSAFE_KEYS = st.one_of(
    st.sampled_from(["a/b", "../up", "..", ".hidden", "back\\slash", "", " ", "tab\there", "CON"]),
    st.text(min_size=201, max_size=230, alphabet="abc"),
    st.tuples(SAFE_KEYS, st.sampled_from(["/", "\x00", "\n", "\x7f"]), SAFE_KEYS).map("".join),
)
WRONG_TYPES = st.sampled_from(
    [
        ("n", "abc"),
        ("n", 1.5),
        ("quality", 5),
        ("quality", "ultra"),
        ("output_compression", "high"),
        ("size", 1024),
        ("size", "1000x1000"),
        ("background", "transparent"),
        ("model", "dall-e-3"),
    ]
)


def _rows(keys: list[str]) -> list[dict[str, Any]]:
    return [{"key": key, "prompt": f"a lighthouse {i}"} for i, key in enumerate(keys)]


def _refused(records: list[dict[str, Any]]) -> str:
    """The message of the error refusing ``records`` as an image asset's table (at load time)."""
    with pytest.raises((PromptTableError, InvalidRequestError)) as raised:
        image_generation_asset(
            name=unique("t").replace("-", "_"), prompts=PromptTable.from_records(records), size=SIZE
        )
    return str(raised.value)


@FUZZ
@given(keys=st.lists(SAFE_KEYS, min_size=1, max_size=6, unique=True), data=st.data())
def test_bad_prompt_tables_are_refused_naming_the_problem(
    keys: list[str], data: st.DataObject
) -> None:
    problem = data.draw(
        st.sampled_from(
            ["duplicate", "unsafe", "missing_prompt", "missing_key", "type", "huge", "empty"]
        )
    )
    records = _rows(keys)
    row = data.draw(st.integers(0, len(records) - 1))
    if problem == "duplicate":
        records.append({"key": keys[row], "prompt": "again"})
        expected = ["duplicate key", repr(keys[row])]
    elif problem == "unsafe":
        records[row]["key"] = data.draw(UNSAFE_KEYS)
        expected = [f"row {row + 1}"]
    elif problem == "missing_prompt":
        records = [{"key": r["key"]} for r in records]
        expected = ["missing the required column 'prompt'"]
    elif problem == "missing_key":
        records = [{"prompt": r["prompt"]} for r in records]
        expected = ["missing the required column 'key'"]
    elif problem == "type":
        column, value = data.draw(WRONG_TYPES)
        records[row][column] = value
        expected = [column]
    elif problem == "huge":
        records[row]["prompt"] = "x" * data.draw(st.integers(32_001, 40_000))
        expected = ["prompt", "32,000"]
    else:
        records = []
        expected = ["no rows"]
    message = _refused(records)
    for text in expected:
        assert text in message, (text, message)


def _write_table(path: Path, fmt: str, records: list[dict[str, Any]]) -> None:
    if fmt == "csv":
        columns = sorted({c for r in records for c in r})
        lines = [",".join(columns)] + [
            ",".join(str(r.get(c, "")) for c in columns) for r in records
        ]
        path.write_text("\n".join(lines) + ("\n" if records else ""))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "yaml":
        import yaml

        path.write_text(yaml.safe_dump(records) if records else "")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)


@settings(max_examples=40, deadline=None)
@given(
    fmt=st.sampled_from(["csv", "jsonl", "yaml", "parquet"]),
    problem=st.sampled_from(["empty_file", "missing_prompt", "wrong_type", "duplicate"]),
    keys=st.lists(SAFE_KEYS, min_size=2, max_size=5, unique=True),
)
def test_bad_prompt_table_files_are_refused_naming_file_and_column(
    fmt: str, problem: str, keys: list[str]
) -> None:
    records = _rows(keys)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"prompts.{fmt}"
        if problem == "empty_file":
            path.write_bytes(b"")
            expected = [path.name]
        else:
            if problem == "missing_prompt":
                records = [{"key": r["key"], "caption": r["prompt"]} for r in records]
                expected = [path.name, "'prompt'"]
            elif problem == "wrong_type":
                records[0]["n"] = "many"
                expected = [path.name, "n="]
            else:
                records.append({"key": keys[0], "prompt": "again"})
                expected = [path.name, "duplicate key"]
            _write_table(path, fmt, records)
        with pytest.raises(PromptTableError) as raised:
            PromptTable.from_path(path)
    for text in expected:
        assert text in str(raised.value), (text, str(raised.value))


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    bad=st.sampled_from(
        [
            ("output_format", "avif"),
            ("output_format", "gif"),
            ("size", "16:9"),
            ("resolution", "4K"),
        ]
    ),
    n=st.integers(2, 6),
    data=st.data(),
)
def test_rows_only_another_provider_accepts_fail_the_run_before_any_request(
    tmp_path: Path, instance: dg.DagsterInstance, bad: tuple[str, str], n: int, data: st.DataObject
) -> None:
    """Load time accepts what any provider accepts (the provider is not known yet); the run checks
    every partition against the real provider before sending anything."""
    field, value = bad
    records = _rows([f"k{i}" for i in range(n)])
    row = data.draw(st.integers(0, n - 1))
    records[row][field] = value
    table = PromptTable.from_records(records)
    asset = image_generation_asset(
        name=unique("provider").replace("-", "_"), prompts=table, size=SIZE
    )
    resources, emulator = emulator_resources(tmp_path / unique("store"))

    result = run_range([asset], resources, table.keys, instance)

    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert "no request was sent" in message
    assert f"k{row}: invalid" in message
    assert field in message
    assert emulator.stats.requests == 0


# --- input images ---------------------------------------------------------------------------------

_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"RIFF", b"GIF8", b"\x00\x00\x00")


def _image(fmt: str, size: tuple[int, int] = (64, 64), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 40).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


VALID_INPUTS = {fmt: _image(fmt) for fmt in ("PNG", "JPEG", "WEBP")}


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (a decompression bomb's header)."""
    base = _image("PNG", (1, 1))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return base[:8] + ihdr + base[8 + len(ihdr) :]


@FUZZ
@given(data=st.binary(max_size=4096).filter(lambda b: not b.startswith(_SIGNATURES)))
def test_bytes_that_are_not_an_image_are_refused(client: GPTImageClient, data: bytes) -> None:
    with pytest.raises(InvalidImageError) as raised:
        client.edit_sync("make it blue", [data], size=SIZE)
    assert raised.value.field == "images[0]"


@FUZZ
@given(fmt=st.sampled_from(sorted(VALID_INPUTS)), data=st.data(), position=st.integers(0, 1))
def test_truncated_images_are_refused(
    client: GPTImageClient, fmt: str, data: st.DataObject, position: int
) -> None:
    whole = VALID_INPUTS[fmt]
    cut = data.draw(st.integers(1, len(whole) - 1), label="kept bytes")
    images = [VALID_INPUTS["PNG"], whole[:cut]] if position else [whole[:cut]]
    with pytest.raises(InvalidImageError) as raised:
        client.edit_sync("make it blue", images, size=SIZE)
    assert raised.value.field == f"images[{position}]"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@FUZZ
@given(
    width=st.integers(1, 2**31 - 1),
    height=st.integers(1, 2**31 - 1),
)
def test_decompression_bombs_are_refused_from_the_header(
    client: GPTImageClient, width: int, height: int
) -> None:
    assume(width * height > MAX_IMAGE_PIXELS)
    with pytest.raises(InvalidImageError) as raised:
        client.edit_sync("make it blue", [_png_declaring(width, height)], size=SIZE)
    assert raised.value.field == "images[0]"
    assert "refusing to decode" in str(raised.value) or "pixels" in str(raised.value)


@FUZZ
@given(width=st.integers(1, 200), height=st.integers(1, 200))
def test_a_mask_of_another_size_is_refused(client: GPTImageClient, width: int, height: int) -> None:
    assume((width, height) != (64, 64))
    mask = _image("PNG", (width, height), mode="RGBA")
    with pytest.raises(InvalidRequestError) as raised:
        client.edit_sync("make it blue", [VALID_INPUTS["PNG"]], mask=mask, size=SIZE)
    assert raised.value.field == "mask"
    assert f"{width}x{height}" in str(raised.value)
