"""``parse_images_answer`` (base64 texts cut out of the body without parsing them) against the
full parse as oracle, and ``decode_b64`` against ``base64.b64decode(validate=True)``."""

from __future__ import annotations

import base64
import binascii
import json
import random
import string
from typing import Any

import pytest
from _httpfakes import Scripted, image_bytes, make_client, raw
from hypothesis import given
from hypothesis import strategies as st

from dagster_gptimage import _providers as providers
from dagster_gptimage.errors import ProviderError

B64_ALPHABET = string.ascii_letters + string.digits + "+/"


def outcome(parse: Any, decode: Any, body: bytes) -> tuple[str, Any]:
    """What a client makes of ``body`` with a parser and a base64 decoder: the body's fields and
    every datum's image bytes, or the fact that it refused the body (a control character in a
    base64 text is refused by the full parse as no JSON, by the cut as no base64)."""
    try:
        result = parse(body)
        if isinstance(result, providers.ImagesAnswer):
            assert all(datum.b64_json is None for datum in result.body.data)
            parsed, texts = result.body, result.encoded
        else:
            parsed, texts = result, [datum.b64_json for datum in result.data]
        images = [decode(text) if text else None for text in texts]
    except (ValueError, binascii.Error):
        return ("refused", None)
    fields = parsed.model_dump(exclude={"data"})
    data = [(datum.url, datum.revised_prompt) for datum in parsed.data]
    return ("parsed", (fields, data, images))


def _full_decode(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def same_as_full_parse(body: bytes) -> providers.ImagesAnswer | None:
    expected = outcome(providers.parse_images_body, _full_decode, body)
    assert outcome(providers.parse_images_answer, providers.decode_b64, body) == expected
    if expected[0] == "refused":
        return None
    return providers.parse_images_answer(body)


def b64(size: int = 40, seed: int = 0) -> str:
    return base64.b64encode(random.Random(seed).randbytes(size)).decode()


# --- the shapes providers send -----------------------------------------------------------------


def test_an_openai_body_is_cut_not_copied() -> None:
    text = b64(3000)
    body = json.dumps(
        {"created": 1, "data": [{"b64_json": text}], "usage": {"total_tokens": 3}}
    ).encode()
    answer = same_as_full_parse(body)
    assert answer is not None
    view = answer.encoded[0]
    assert isinstance(view, memoryview)
    assert view.obj is body
    assert providers.decode_b64(view) == base64.b64decode(text)
    assert answer.body.usage == {"total_tokens": 3}


@pytest.mark.parametrize(
    "body",
    [
        # several images, revised prompts, keys in any order, whitespace everywhere
        {"data": [{"revised_prompt": "r1", "b64_json": b64(seed=1)}, {"b64_json": b64(seed=2)}]},
        {"usage": {"a": 1}, "created": 5, "data": [{"b64_json": b64(), "revised_prompt": None}]},
        # a gateway: url items, with or without a null b64_json, mixed with base64 items
        {"created": 1, "data": [{"url": "https://cdn/x.png", "b64_json": None}]},
        {"created": 1, "data": [{"b64_json": b64(), "url": None}, {"url": "https://cdn/y.png"}]},
        {"created": 1, "data": [{"b64_json": "", "url": "https://cdn/z.png"}]},
        # the text "b64_json" where it is no image
        {"created": 1, "response_format": "b64_json", "data": [{"b64_json": b64()}]},
        {"created": 1, "data": [{"b64_json": b64(), "revised_prompt": 'say "b64_json": "QUJD"'}]},
        {"created": 1, "usage": {"b64_json": b64(seed=3)}, "data": [{"b64_json": b64()}]},
        {"created": 1, "data": [{"b64_json": b64(), "meta": {"b64_json": "QUJD"}}]},
        {"created": 1, "data": [{'x"b64_json': b64(), "b64_json": b64(seed=4)}]},
        # a NUL in the rest of the body (the cut-out marks use one)
        {"created": 1, "data": [{"b64_json": b64(), "revised_prompt": "\x00b64:0"}]},
        {"created": 1, "data": [{"b64_json": "\x00b64:0"}]},
        # refused by both
        {"created": 1, "data": []},
        {"created": 1, "data": [{"b64_json": ""}]},
        {"created": "yesterday", "data": [{"b64_json": b64()}]},
        {"error": {"message": "nope", "code": "server_error"}},
        {"created": 1, "data": [{"revised_prompt": "no image"}]},
    ],
)
@pytest.mark.parametrize("indent", [None, 2, "\t"])
def test_provider_shapes_parse_like_the_full_parse(body: dict[str, Any], indent: Any) -> None:
    same_as_full_parse(json.dumps(body, indent=indent).encode())
    same_as_full_parse(json.dumps(body, separators=(",", ":")).encode())
    same_as_full_parse(json.dumps(body, separators=(" ,\r\n ", " \n: \t")).encode())


@pytest.mark.parametrize(
    "body",
    [
        # escaped slashes (PHP's json_encode) or other escapes: parsed whole
        b'{"created": 1, "data": [{"b64_json": "ab\\/cdA=="}]}',
        b'{"created": 1, "data": [{"b64_json": "QUJD\\n"}]}',
        b'{"created": 1, "data": [{"b64_json": "QUJD", "revised_prompt": "\\u0000b64:0"}]}',
        b'{"created": 1, "data": [{"b64\\u005fjson": "QUJD"}]}',
        # duplicate keys: the last wins
        b'{"created": 1, "data": [{"b64_json": "QUJD", "b64_json": "REVG"}]}',
        b'{"data": [{"b64_json": "QUJD"}], "data": [{"b64_json": "REVG"}]}',
        # broken bodies
        b'{"created": 1, "data": [{"b64_json": "iVBO',
        b'{"created": 1, "data": [{"b64_json": "QUJD"}]',
        b'{"created": 1, "data": [{"b64_json": "QU\x01JD"}]}',
        b'{"created": 1, "data": [{"b64_json": "QUJD"}]} trailing',
        b'{"created": 1, "data": [{"b64_json" "QUJD"}]}',
        b'["b64_json", {"b64_json": "QUJD"}]',
        b"\xef\xbb\xbf" + b'{"created": 1, "data": [{"b64_json": "QUJD"}]}',
        b"",
    ],
)
def test_odd_bodies_parse_like_the_full_parse(body: bytes) -> None:
    same_as_full_parse(body)


def test_escaped_base64_is_parsed_whole_and_decodes_the_same() -> None:
    answer = same_as_full_parse(b'{"created": 1, "data": [{"b64_json": "ab\\/cdA=="}]}')
    assert answer is not None
    assert answer.encoded == ["ab/cdA=="]
    assert providers.decode_b64("ab/cdA==") == base64.b64decode("ab/cdA==")


_keys = st.sampled_from(["b64_json", "url", "revised_prompt", "x", "b64"])
_texts = st.one_of(
    st.text(alphabet=B64_ALPHABET + '=\\"/ ', max_size=12),
    st.text(max_size=6),
    st.builds(lambda n: b64(n, seed=n), st.integers(0, 30)),
)
_values = st.one_of(st.none(), st.integers(-2, 2), _texts)
_datum = st.dictionaries(_keys, _values, max_size=4)
_bodies = st.fixed_dictionaries(
    {"data": st.lists(st.one_of(_datum, _values), max_size=3)},
    optional={
        "created": st.one_of(st.integers(0, 9), _texts),
        "usage": st.one_of(_datum, _values),
        "b64_json": _values,
    },
)


@given(
    body=_bodies,
    separators=st.sampled_from([(", ", ": "), (",", ":"), (" ,\n", "\t: ")]),
    shuffle=st.randoms(use_true_random=False),
)
def test_any_body_parses_like_the_full_parse(
    body: dict[str, Any], separators: tuple[str, str], shuffle: random.Random
) -> None:
    items = list(body.items())
    shuffle.shuffle(items)
    same_as_full_parse(json.dumps(dict(items), separators=separators).encode())


# --- base64 ------------------------------------------------------------------------------------


def reference(text: str | bytes) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def ours(text: providers.B64Text, *, fast: bool = True) -> bytes | None:
    with pytest.MonkeyPatch.context() as patch:
        if not fast:
            patch.setattr(providers, "_pybase64", None)
        try:
            return providers.decode_b64(text)
        except (binascii.Error, ValueError):
            return None


@given(
    st.text(alphabet=B64_ALPHABET[:6] + "+/=\n -_é\x00", max_size=14),
    st.booleans(),
)
def test_decode_b64_accepts_what_b64decode_validate_accepts(text: str, fast: bool) -> None:
    expected = reference(text)
    assert ours(text, fast=fast) == expected
    if text.isascii():
        assert ours(memoryview(text.encode()), fast=fast) == expected


@given(st.binary(max_size=64), st.booleans())
def test_decode_b64_round_trips(data: bytes, fast: bool) -> None:
    encoded = base64.b64encode(data)
    assert ours(memoryview(encoded), fast=fast) == data
    assert ours(encoded.decode(), fast=fast) == data


def test_pybase64_decodes_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pybase64 = pytest.importorskip("pybase64")
    calls: list[int] = []

    def counted(text: Any, validate: bool) -> bytes:
        calls.append(len(text))
        return pybase64.b64decode(text, validate=validate)

    monkeypatch.setattr(providers, "_pybase64", type("Fake", (), {"b64decode": counted}))
    text = memoryview(base64.b64encode(b"\x89PNG" * 300))
    assert providers.decode_b64(text) == b"\x89PNG" * 300
    assert calls == [len(text)]
    # what pybase64 refuses and the standard library accepts (padding past a full quad) passes
    assert ours("QUJD====") == reference("QUJD====")


# --- through the client ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.usefixtures("no_backoff_sleep")
async def test_client_reads_cut_out_and_escaped_images_alike() -> None:
    images = [image_bytes(40, 30), image_bytes(20, 10)]
    texts = [base64.b64encode(image).decode() for image in images]
    plain = json.dumps({"created": 1, "data": [{"b64_json": t} for t in texts]}).encode()
    escaped = plain.replace(b"/", b"\\/")
    for body in (plain, escaped):
        client = make_client(Scripted(raw(200, body)))
        result = await client.execute(client.build_generate("p", n=2))
        assert [image.data for image in result.images] == images
        assert [(image.width, image.height) for image in result.images] == [(40, 30), (20, 10)]


@pytest.mark.anyio
@pytest.mark.usefixtures("no_backoff_sleep")
@pytest.mark.parametrize("text", ["QUJD!!==", "QUJDRA=", "=QUJD", "QU JD", "QUJD\\n"])
async def test_bad_base64_names_the_field_and_is_possibly_billed(text: str) -> None:
    first = base64.b64encode(image_bytes()).decode()
    body = json.dumps({"created": 1, "data": [{"b64_json": first}, {"b64_json": text}]})
    client = make_client(Scripted(raw(200, body.encode())), max_retries=0)
    with pytest.raises(ProviderError, match=r"data\[1\]\.b64_json is not valid base64") as info:
        await client.execute(client.build_generate("p", n=2))
    assert info.value.possibly_billed_attempts == 1
