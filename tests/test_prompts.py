"""Prompt tables: loading every format, key rules, per-row overrides and whole-table error reports."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import pickle
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_gptimage.errors import GPTImageError
from dagster_gptimage.models import REQUEST_FIELDS, ImageParams
from dagster_gptimage.prompts import (
    MAX_KEY_LENGTH,
    PromptRow,
    PromptTable,
    PromptTableError,
    TableOrigin,
    key_problem,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def memory_url(name: str) -> str:
    """A unique memory:// URL: fsspec's memory file system is shared by the whole process."""
    return f"memory://prompts-{uuid.uuid4().hex}/{name}"


# --- formats ---------------------------------------------------------------------------------------


def test_csv_rows_params_and_extra(tmp_path: Path) -> None:
    path = write(
        tmp_path / "prompts.csv",
        "key,prompt,size,n,output_compression,quality,style\n"
        "cat,a cat on a mat,1024x1536,2,80,High,watercolor\n"
        "dog, a dog ,,,,,\n",
    )
    table = PromptTable.from_path(path)

    assert table.keys == ("cat", "dog")
    cat = table.row("cat")
    assert cat.prompt == "a cat on a mat"
    assert cat.params == {"size": "1024x1536", "n": 2, "output_compression": 80, "quality": "high"}
    assert cat.extra == {"style": "watercolor"}
    dog = table.row("dog")
    assert dog.prompt == "a dog"
    assert dog.params == {}, "empty cells must mean 'use the asset default'"
    assert dog.extra == {"style": None}
    assert len(table) == 2
    assert [row.key for row in table] == ["cat", "dog"]
    assert "cat" in table
    assert "bird" not in table
    assert table.format == "csv"
    assert table.source == str(path)
    assert table.description == f"Images generated from {path} (2 prompts)"
    assert table.param_columns == ("size", "n", "output_compression", "quality")
    assert table.extra_columns == ("style",)


def test_csv_header_whitespace_bom_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes("\ufeff key , prompt \n\na,one\n\n b ,two\n".encode())
    table = PromptTable.from_path(path)
    assert table.keys == ("a", "b")
    assert table.row("b").prompt == "two"


def test_csv_quoted_multiline_prompt_keeps_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", 'key,prompt\na,"line one\nline two"\nb/c,x\n')
    with pytest.raises(PromptTableError) as info:
        PromptTable.from_path(path)
    (problem,) = info.value.problems
    assert (problem.row, problem.line, problem.key) == (2, 4, "b/c")
    assert "row 2 (line 4)" in str(info.value)


def test_csv_row_with_too_many_cells(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "key,prompt\na,one\nb,two, three\n")
    with pytest.raises(PromptTableError, match="3 cells but the header names 2 columns"):
        PromptTable.from_path(path)


def test_csv_short_rows_are_fine(tmp_path: Path) -> None:
    table = PromptTable.from_path(write(tmp_path / "p.csv", "key,prompt,size\na,one\n"))
    assert table.row("a").params == {}


def test_csv_duplicate_columns(tmp_path: Path) -> None:
    with pytest.raises(PromptTableError, match="'prompt' more than once"):
        PromptTable.from_path(write(tmp_path / "p.csv", "key,prompt,prompt\na,b,c\n"))


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
def test_jsonl(tmp_path: Path, suffix: str) -> None:
    lines = [
        {"key": "a", "prompt": "one", "n": 3, "tags": ["x", "y"], "meta": {"w": 1}},
        {"key": "b", "prompt": "two", "size": None, "score": 0.5},
    ]
    path = write(tmp_path / f"p{suffix}", "\n".join(json.dumps(line) for line in lines) + "\n\n")
    table = PromptTable.from_path(path)
    assert table.format == "jsonl"
    assert table.row("a").params == {"n": 3}
    assert table.row("a").extra == {"tags": ["x", "y"], "meta": {"w": 1}}
    assert table.row("b").params == {}
    assert table.row("b").extra == {"score": 0.5}


def test_jsonl_reports_every_bad_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.jsonl",
        '{"key": "a", "prompt": "ok"}\n{not json}\n\n[1, 2]\n{"key": "d", "prompt": ""}\n',
    )
    with pytest.raises(PromptTableError) as info:
        PromptTable.from_path(path)
    error = info.value
    assert [(p.row, p.line) for p in error.problems] == [(2, 2), (3, 4), (4, 5)]
    assert "not valid JSON" in str(error)
    assert "JSON list, not an object" in str(error)
    assert "prompt is empty" in str(error)
    assert str(path) in str(error)


def test_parquet_with_integer_keys_and_nulls(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(
        pa.table(
            {
                "key": [1, 2],
                "prompt": ["one", "two"],
                "n": [2, None],
                "output_compression": [None, 50.0],
                "weight": [1.5, float("nan")],
            }
        ),
        path,
    )
    table = PromptTable.from_path(path)
    assert table.format == "parquet"
    assert table.keys == ("1", "2")
    assert table.row("1").params == {"n": 2}
    assert table.row("2").params == {"output_compression": 50}
    assert table.row("1").extra == {"weight": 1.5}
    assert table.row("2").extra == {"weight": None}, "NaN is not JSON: it becomes null"


def test_parquet_garbage_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "p.pq"
    path.write_bytes(b"definitely not parquet")
    with pytest.raises(PromptTableError, match="not a readable Parquet file"):
        PromptTable.from_path(path)


def test_yaml_list_keeps_text_as_written(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.yaml",
        """
- key: no
  prompt: a cat
  aspect_ratio: 16:9
  size: 1024x1024
  n: 2
  taken: 2024-01-02
- key: 007
  prompt: |
    a multi-line
    prompt
  quality: ~
""",
    )
    table = PromptTable.from_path(path)
    assert table.keys == ("no", "007"), "YAML 1.1 must not turn keys into False or 7"
    assert table.row("no").params == {"aspect_ratio": "16:9", "size": "1024x1024", "n": 2}
    assert table.row("no").extra == {"taken": "2024-01-02"}
    assert table.row("007").prompt == "a multi-line\nprompt"
    assert table.row("007").params == {}


def test_yaml_rows_mapping(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.yml", "rows:\n  - {key: a, prompt: one}\n  - {key: b, prompt: two}\n"
    )
    assert PromptTable.from_path(path).keys == ("a", "b")


def test_yaml_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(PromptTableError, match=r"found keys: row"):
        PromptTable.from_path(write(tmp_path / "p.yaml", "row:\n  - {key: a, prompt: one}\n"))
    with pytest.raises(PromptTableError, match="invalid row") as info:
        PromptTable.from_path(write(tmp_path / "q.yaml", "- {key: a, prompt: one}\n- just text\n"))
    assert info.value.problems[0].row == 2
    with pytest.raises(PromptTableError, match="not valid YAML"):
        PromptTable.from_path(write(tmp_path / "r.yaml", "- key: [unclosed\n"))


def test_format_override_and_unknown_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "prompts.txt", "key,prompt\na,one\n")
    with pytest.raises(PromptTableError, match=r"'\.txt'.*pass format="):
        PromptTable.from_path(path)
    assert PromptTable.from_path(path, format="csv").keys == ("a",)
    with pytest.raises(PromptTableError, match="JSON Lines"):
        PromptTable.from_path(write(tmp_path / "p.json", "[]"))
    with pytest.raises(PromptTableError, match="Unknown prompt table format 'xlsx'"):
        PromptTable.from_path(path, format="xlsx")  # type: ignore[arg-type]


def test_compressed_csv(tmp_path: Path) -> None:
    path = tmp_path / "p.csv.gz"
    path.write_bytes(gzip.compress(b"key,prompt\na,one\n"))
    table = PromptTable.from_path(path)
    assert table.format == "csv"
    assert table.keys == ("a",)


def test_memory_and_file_urls(tmp_path: Path) -> None:
    url = memory_url("p.csv")
    fsspec.filesystem("memory").pipe_file(url, b"key,prompt\nm,from memory\n")
    assert PromptTable.from_path(url).row("m").prompt == "from memory"
    path = write(tmp_path / "f.csv", "key,prompt\nf,from file\n")
    assert PromptTable.from_path(path.as_uri()).keys == ("f",)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PromptTableError, match="does not exist"):
        PromptTable.from_path(tmp_path / "nope.csv")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes("key,prompt\na,caf\xe9\n".encode("latin-1"))
    with pytest.raises(PromptTableError, match="not UTF-8"):
        PromptTable.from_path(path)


def test_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "p.csv", "key,prompt\na,one\n")
    monkeypatch.chdir(tmp_path)
    table = PromptTable.from_path("p.csv")
    assert table.source == str(tmp_path / "p.csv")
    monkeypatch.chdir("/")
    assert table.reload().keys == ("a",), "reload from another working directory"


def test_credentials_in_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(PromptTableError) as info:
        PromptTable.from_path("s3://AKIAFAKE:sup3r-s3cret-value@bucket/p.csv")
    assert "storage_options" in str(info.value)
    assert "sup3r-s3cret-value" not in str(info.value)
    assert "AKIAFAKE" not in str(info.value)


# --- columns and emptiness ----------------------------------------------------------------------


def test_missing_columns_name_file_column_and_columns_found(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "key,text\na,one\n")
    with pytest.raises(PromptTableError) as info:
        PromptTable.from_path(path)
    message = str(info.value)
    assert str(path) in message
    assert "'prompt'" in message
    assert "columns found: 'key', 'text'" in message
    assert "prompt_column" in message
    table = PromptTable.from_path(path, prompt_column="text")
    assert table.row("a").prompt == "one"
    assert table.row("a").extra == {}


def test_custom_key_column_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "id,prompt\na,one\n")
    with pytest.raises(PromptTableError, match="'key'"):
        PromptTable.from_path(path)
    table = PromptTable.from_path(path, key_column="id")
    assert table.keys == ("a",)
    assert table.key_column == "id"
    assert table.reload().keys == ("a",)


def test_same_key_and_prompt_column() -> None:
    with pytest.raises(PromptTableError, match="different columns"):
        PromptTable.from_records([{"x": "a"}], key_column="x", prompt_column="x")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("empty.csv", ""),
        ("header.csv", "key,prompt\n"),
        ("empty.jsonl", "\n\n"),
        ("empty.yaml", ""),
        ("list.yaml", "[]"),
    ],
)
def test_empty_tables(tmp_path: Path, name: str, text: str) -> None:
    with pytest.raises(PromptTableError, match=r"empty|no rows") as info:
        PromptTable.from_path(write(tmp_path / name, text))
    assert name in str(info.value)


def test_empty_records() -> None:
    with pytest.raises(PromptTableError, match="no rows"):
        PromptTable.from_records([])


# --- keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "cat-01",
        "a.b",
        "snake_case",
        "Ünïcödé-日本語",
        "x" * MAX_KEY_LENGTH,
        "with space",
        "2024-01-01",
        "a+b=c",
    ],
)
def test_valid_keys(key: str) -> None:
    assert key_problem(key) is None


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("", "empty"),
        ("x" * (MAX_KEY_LENGTH + 1), "201 characters"),
        ("a/b", "'/'"),
        ("a\\b", "'\\\\'"),
        ("..", "'..'"),
        ("a..b", "'..'"),
        ("a...b", "'..'"),
        (".hidden", "starts with '.'"),
        ("trailing.", "ends with '.'"),
        ("a,b", "','"),
        ("a|b", "'|'"),
        ("[x]", "'['"),
        ("a:b", "':'"),
        ("a*b", "'*'"),
        ("a?b", "'?'"),
        ("a\nb", "U+000A"),
        ("a\tb", "U+0009"),
        ("a\x00b", "U+0000"),
        ("a\u202eb", "U+202E"),
        ("nul", "reserved"),
        ("COM1.png", "reserved"),
    ],
)
def test_invalid_keys(key: str, fragment: str) -> None:
    problem = key_problem(key)
    assert problem is not None
    assert fragment in problem[0]
    assert problem[1], "every problem comes with a fix"


def test_every_bad_row_is_listed_once(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.csv",
        "key,prompt,n\n"
        "ok,fine,1\n"
        "a/b,slash,\n"
        ",no key,\n"
        "ok,duplicate,\n"
        "Ok,case clash,\n"
        "empty,,\n"
        "num,bad n,two\n"
        "fine,also fine,2\n",
    )
    with pytest.raises(PromptTableError) as info:
        PromptTable.from_path(path)
    error = info.value
    assert [p.row for p in error.problems] == [2, 3, 4, 5, 6, 7]
    message = str(error)
    assert message.startswith(f"Prompt table '{path}' has 6 invalid rows:")
    for fragment in [
        "row 2 (line 3), key 'a/b': key contains '/'",
        "row 3 (line 4): key is missing",
        "row 4 (line 5), key 'ok': duplicate key (also used by row 1)",
        "row 5 (line 6), key 'Ok': key differs from 'ok' (row 1) only by letter case",
        "row 6 (line 7), key 'empty': prompt is empty",
        "row 7 (line 8), key 'num': n='two' is not a whole number",
    ]:
        assert fragment in message
    assert message.count("fix:") == 6
    assert error.source == str(path)


def test_key_problems_come_first_within_a_row() -> None:
    with pytest.raises(PromptTableError) as info:
        PromptTable.from_records([{"key": "a/b", "prompt": "", "n": "x"}])
    assert [p.problem.split(" ")[0] for p in info.value.problems] == ["key", "prompt", "n='x'"]


def test_keys_are_stripped_and_numbers_become_text() -> None:
    table = PromptTable.from_records(
        [{"key": " a ", "prompt": "x"}, {"key": 7, "prompt": 1.5}, {"key": 8.0, "prompt": "y"}]
    )
    assert table.keys == ("a", "7", "8")
    assert table.row("7").prompt == "1.5"


@pytest.mark.parametrize("bad", [True, ["a"], {"a": 1}])
def test_non_text_keys_are_refused(bad: Any) -> None:
    with pytest.raises(PromptTableError, match="key must be text"):
        PromptTable.from_records([{"key": bad, "prompt": "x"}])


def test_error_is_a_gptimage_and_value_error_and_pickles() -> None:
    with pytest.raises(PromptTableError) as info:
        PromptTable.from_records([{"key": "a/b", "prompt": "x"}], source="mine.csv")
    error = info.value
    assert isinstance(error, GPTImageError)
    assert isinstance(error, ValueError)
    clone = pickle.loads(pickle.dumps(error))
    assert str(clone) == str(error)
    assert clone.problems == error.problems
    assert clone.source == "mine.csv"


# --- params --------------------------------------------------------------------------------------


def test_every_request_field_becomes_a_param() -> None:
    record = {
        "key": "k",
        "prompt": "p",
        "model": "GPT-Image-1",
        "size": "1024X1024",
        "quality": "LOW",
        "n": "2.0",
        "output_format": "WebP",
        "output_compression": " 70 ",
        "background": "Opaque",
        "moderation": "low",
        "user": "User-42",
        "input_fidelity": "High",
        "aspect_ratio": "16:9",
        "resolution": "4k",
    }
    row = PromptTable.from_records([record]).row("k")
    assert set(row.params) == set(REQUEST_FIELDS)
    assert row.params == {
        "model": "gpt-image-1",
        "size": "1024x1024",
        "quality": "low",
        "n": 2,
        "output_format": "webp",
        "output_compression": 70,
        "background": "opaque",
        "moderation": "low",
        "user": "User-42",
        "input_fidelity": "high",
        "aspect_ratio": "16:9",
        "resolution": "4K",
    }
    assert row.extra == {}


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", "two"), ("n", 2.5), ("n", True), ("output_compression", "80%"), ("size", ["a"])],
)
def test_bad_param_types(field: str, value: Any) -> None:
    with pytest.raises(PromptTableError, match=f"{field}=") as info:
        PromptTable.from_records([{"key": "k", "prompt": "p", field: value}])
    assert info.value.problems[0].key == "k"


@pytest.mark.parametrize("empty", [None, "", "  ", float("nan")])
def test_empty_params_are_absent(empty: Any) -> None:
    row = PromptTable.from_records([{"key": "k", "prompt": "p", "size": empty, "n": empty}]).row(
        "k"
    )
    assert row.params == {}


def test_image_params_merges_defaults() -> None:
    row = PromptRow(key="k", prompt="p", params={"size": "1024x1024", "n": 2})
    params = row.image_params(ImageParams(quality="low", n=4))
    assert params == ImageParams(quality="low", n=2, size="1024x1024")


def test_extra_is_json_safe() -> None:
    class FakeNumpyInt:
        def item(self) -> int:
            return 3

    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    row = PromptTable.from_records(
        [
            {
                "key": "k",
                "prompt": "p",
                "count": FakeNumpyInt(),
                "blob": b"\x00\x01",
                "inf": math.inf,
                "nested": {"t": (1, 2), 3: {4}},
                "obj": Opaque(),
                "n": FakeNumpyInt(),
            }
        ]
    ).row("k")
    assert row.params == {"n": 3}
    assert row.extra == {
        "count": 3,
        "blob": "<2 bytes>",
        "inf": None,
        "nested": {"t": [1, 2], "3": [4]},
        "obj": "opaque!",
    }
    json.dumps(row.extra)


# --- in-memory sources -----------------------------------------------------------------------------


def test_from_records_non_mapping() -> None:
    with pytest.raises(PromptTableError, match="row is a str, not a mapping"):
        PromptTable.from_records([{"key": "a", "prompt": "x"}, "oops"])  # type: ignore[list-item]


def test_from_records_description_and_reload_returns_self() -> None:
    table = PromptTable.from_records([{"key": "a", "prompt": "x"}])
    assert table.source is None
    assert table.description == "Images generated from in-memory records (1 prompt)"
    assert table.reload() is table
    named = PromptTable.from_records([{"key": "a", "prompt": "x"}], description="My cats")
    assert named.description == "My cats"


def test_from_dataframe_duck_typed() -> None:
    records = [{"key": "a", "prompt": "x", "n": 2.0}, {"key": "b", "prompt": "y", "n": math.nan}]

    class PandasLike:
        def to_dict(self, orient: str) -> list[dict[str, Any]]:
            assert orient == "records"
            return records

    class PolarsLike:
        def to_dict(self, *args: Any) -> Any:
            raise AssertionError("polars frames must go through to_dicts()")

        def to_dicts(self) -> list[dict[str, Any]]:
            return records

    for frame in (PandasLike(), PolarsLike(), pa.Table.from_pylist(records)):
        table = PromptTable.from_dataframe(frame)
        assert table.keys == ("a", "b")
        assert table.row("a").params == {"n": 2}
        assert table.row("b").params == {}
    with pytest.raises(TypeError, match="DataFrame"):
        PromptTable.from_dataframe(object())


def test_direct_constructor_checks_keys() -> None:
    rows = [PromptRow(key="a", prompt="x"), PromptRow(key="a", prompt="y")]
    with pytest.raises(PromptTableError, match="duplicate key"):
        PromptTable(rows)
    with pytest.raises(PromptTableError, match="no rows"):
        PromptTable([])


def test_row_lookup_suggests_close_keys() -> None:
    table = PromptTable.from_records([{"key": "cat-01", "prompt": "x"}])
    with pytest.raises(KeyError, match="did you mean 'cat-01'"):
        table.row("cat-1")


# --- reload and hashing ----------------------------------------------------------------------------


def test_reload_sees_changes_and_hash_follows_content(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "key,prompt\na,one\n")
    table = PromptTable.from_path(path)
    same = table.reload()
    assert same is not table
    assert same.content_hash == table.content_hash
    write(path, "key,prompt\na,one\nb,two\n")
    grown = table.reload()
    assert grown.keys == ("a", "b")
    assert grown.content_hash != table.content_hash
    assert grown.description.endswith("(2 prompts)")


def test_hash_ignores_format_and_column_order(tmp_path: Path) -> None:
    csv_table = PromptTable.from_path(write(tmp_path / "p.csv", "prompt,key,size\none,a,auto\n"))
    jsonl_table = PromptTable.from_path(
        write(tmp_path / "p.jsonl", '{"key": "a", "size": "auto", "prompt": "one"}\n')
    )
    assert csv_table.content_hash == jsonl_table.content_hash
    changed = PromptTable.from_records([{"key": "a", "prompt": "one", "size": "1024x1024"}])
    assert changed.content_hash != csv_table.content_hash


def test_repr_is_short() -> None:
    table = PromptTable.from_records([{"key": "a", "prompt": "x"}], source="t.csv")
    assert repr(table) == "PromptTable(source='t.csv', rows=1)"


def test_content_hash_of_tables_without_revisions_is_unchanged() -> None:
    """The value the hash had before the revision column existed (data versions depend on it)."""
    table = PromptTable.from_records(
        [
            {"key": "a", "prompt": "a cat", "size": "1024x1024", "note": "x"},
            {"key": "b", "prompt": "a dog", "n": 2},
        ]
    )
    assert table.content_hash == "a686c0f06dec919050cd361e94ea6b2426b7450383760bb1403113dd19b30248"
    revised = PromptTable.from_records(
        [
            {"key": "a", "prompt": "a cat", "size": "1024x1024", "note": "x", "revision": 2},
            {"key": "b", "prompt": "a dog", "n": 2},
        ]
    )
    assert revised.content_hash != table.content_hash


# --- origin --------------------------------------------------------------------------------------


def test_origin_records_how_the_table_was_read_and_reload_uses_it(tmp_path: Path) -> None:
    path = write(tmp_path / "p.txt", "id;text\n")
    write(path, "id,text\na,one\n")
    table = PromptTable.from_path(path, format="csv", key_column="id", prompt_column="text")
    origin = table.origin
    assert origin == TableOrigin(url=str(path), format="csv", key_column="id", prompt_column="text")
    assert (origin.source, origin.format) == (str(path), "csv")
    assert (table.key_column, table.prompt_column, table.format) == ("id", "text", "csv")
    with pytest.raises(dataclasses.FrozenInstanceError):
        origin.format = "yaml"  # type: ignore[misc]
    write(path, "id,text\na,one\nb,two\n")
    reloaded = table.reload()
    assert reloaded.keys == ("a", "b")
    assert reloaded.origin == origin
    assert PromptTable.from_origin(origin).keys == ("a", "b")


def test_origin_never_shows_storage_options_or_query_strings() -> None:
    url = memory_url("p.csv")
    fsspec.filesystem("memory").pipe_file(url, b"key,prompt\na,one\n")
    secret = "fake-secret-Zq9xW3-do-not-leak"
    presigned = TableOrigin(url=url + "?X-Amz-Signature=" + secret)
    assert presigned.source == url
    assert presigned.format == "csv"
    assert secret not in repr(presigned)
    options = {"skip_instance_cache": True, "token": secret}
    table = PromptTable.from_path(url, storage_options=options)
    assert table.row("a").prompt == "one"
    assert secret not in repr(table) + repr(table.origin) + str(table.origin)
    with pytest.raises(TypeError):
        table.origin.storage_options["token"] = "other"  # type: ignore[index]
    options["token"] = "changed after construction"
    assert table.origin.storage_options["token"] == secret, "the origin keeps its own copy"


def test_in_memory_origin_and_direct_constructor() -> None:
    table = PromptTable.from_records(
        [{"title": "a", "body": "one"}], key_column="title", prompt_column="body", source="mem"
    )
    assert table.origin == TableOrigin(source="mem", key_column="title", prompt_column="body")
    assert table.origin.url is None
    assert table.format is None
    assert table.reload() is table
    rows = [PromptRow(key="a", prompt="one")]
    direct = PromptTable(rows, origin=TableOrigin(source="s"), columns=("key", "prompt"))
    assert (direct.source, direct.columns) == ("s", ("key", "prompt"))
    with pytest.raises(ValueError, match="not both"):
        PromptTable(rows, source="other", origin=TableOrigin(source="s"))
    with pytest.raises(ValueError, match="lines"):
        PromptTable(rows, lines=[1, 2])
    with pytest.raises(ValueError, match="no file"):
        PromptTable.from_origin(TableOrigin(source="s"))


# --- revision ------------------------------------------------------------------------------------


def _assert_revisions(table: PromptTable) -> None:
    assert table.row("a").revision == "2"
    assert table.row("b").revision == "v1.10"
    assert table.row("c").revision is None
    for row in table:
        assert "revision" not in row.extra
        assert "revision" not in row.params
    assert "revision" not in table.extra_columns
    assert "revision" not in table.param_columns


def test_revision_from_csv(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.csv", "key,prompt,revision,note\na,one,2,x\nb,two,v1.10,y\nc,three,,z\n"
    )
    table = PromptTable.from_path(path)
    _assert_revisions(table)
    assert table.extra_columns == ("note",)
    assert table.row("a").extra == {"note": "x"}


def test_revision_from_jsonl(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.jsonl",
        '{"key": "a", "prompt": "one", "revision": 2}\n'
        '{"key": "b", "prompt": "two", "revision": " v1.10 "}\n'
        '{"key": "c", "prompt": "three", "revision": null}\n',
    )
    _assert_revisions(PromptTable.from_path(path))


def test_revision_from_yaml_is_kept_as_written(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.yaml",
        "- {key: a, prompt: one, revision: 2}\n"
        "- {key: b, prompt: two, revision: v1.10}\n"
        "- {key: c, prompt: three, revision: ~}\n"
        "- {key: d, prompt: four, revision: 1.10}\n",
    )
    table = PromptTable.from_path(path)
    _assert_revisions(table)
    assert table.row("d").revision == "1.10", "YAML must not read 1.10 as the float 1.1"


def test_revision_from_parquet(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(
        pa.table({"key": ["a", "b", "c"], "prompt": ["1", "2", "3"], "revision": [2, None, 7]}),
        path,
    )
    table = PromptTable.from_path(path)
    assert [row.revision for row in table] == ["2", None, "7"]
    text_path = tmp_path / "t.parquet"
    pq.write_table(
        pa.table(
            {"key": ["a", "b", "c"], "prompt": ["1", "2", "3"], "revision": ["2", "v1.10", None]}
        ),
        text_path,
    )
    _assert_revisions(PromptTable.from_path(text_path))


def test_revision_from_a_dataframe_with_gaps() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"key": ["a", "b"], "prompt": ["1", "2"], "revision": [3, None]})
    assert frame["revision"].dtype.kind == "f", "pandas stores an int column with gaps as floats"
    assert [row.revision for row in PromptTable.from_dataframe(frame)] == ["3", None]


@pytest.mark.parametrize("bad", [1.5, [1, 2], {"v": 1}, True])
def test_bad_revisions_name_the_row(bad: Any) -> None:
    with pytest.raises(PromptTableError) as info:
        PromptTable.from_records(
            [
                {"key": "good", "prompt": "x", "revision": 1},
                {"key": "b", "prompt": "y", "revision": bad},
            ]
        )
    [problem] = info.value.problems
    assert (problem.row, problem.key) == (2, "b")
    assert "revision" in problem.problem
    assert "revision" in problem.fix


def test_bad_revision_in_a_file_names_row_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.jsonl",
        '{"key": "a", "prompt": "one"}\n\n{"key": "b", "prompt": "two", "revision": 1.5}\n',
    )
    with pytest.raises(PromptTableError, match=r"row 2 \(line 3\), key 'b': revision=1.5"):
        PromptTable.from_path(path)


def test_prompt_row_normalizes_revision() -> None:
    assert PromptRow(key="a", prompt="x", revision=3).revision == "3"  # type: ignore[arg-type]
    assert PromptRow(key="a", prompt="x", revision=" r2 ").revision == "r2"
    assert PromptRow(key="a", prompt="x", revision="").revision is None
    assert PromptRow(key="a", prompt="x").revision is None
    with pytest.raises(ValueError, match="revision"):
        PromptRow(key="a", prompt="x", revision=1.5)  # type: ignore[arg-type]


# --- validate ------------------------------------------------------------------------------------


def test_validate_accepts_good_rows() -> None:
    table = PromptTable.from_records(
        [{"key": "a", "prompt": "x", "size": "1536x864"}, {"key": "b", "prompt": "y", "n": 3}]
    )
    table.validate(ImageParams())
    table.validate(ImageParams(quality="low"), provider="openai")


def test_validate_lists_every_failing_row() -> None:
    table = PromptTable.from_records(
        [
            {"key": "ok", "prompt": "fine"},
            {"key": "odd", "prompt": "x", "size": "1000x1000"},
            {"key": "many", "prompt": "x", "n": 11},
            {"key": "long", "prompt": "x" * 32_001},
            {"key": "fmt", "prompt": "x", "quality": "ultra"},
        ]
    )
    with pytest.raises(PromptTableError) as info:
        table.validate(ImageParams(), provider="openai")
    error = info.value
    assert [(p.row, p.key) for p in error.problems] == [
        (2, "odd"),
        (3, "many"),
        (4, "long"),
        (5, "fmt"),
    ]
    message = str(error)
    assert "size='1000x1000'" in message
    assert "n=11" in message
    assert "32,001 characters" in message
    assert "quality='ultra'" in message
    assert "x" * 200 not in message, "long prompts are truncated in messages"


def test_validate_uses_defaults_and_provider() -> None:
    table = PromptTable.from_records([{"key": "a", "prompt": "x"}, {"key": "b", "prompt": "y"}])
    with pytest.raises(PromptTableError, match="n=2") as info:
        table.validate(ImageParams(n=2), provider="gateway")
    assert len(info.value.problems) == 2
    table.validate(ImageParams(n=2), provider=None)


def test_validate_edit_tables_checks_params_not_images() -> None:
    table = PromptTable.from_records(
        [{"key": "a", "prompt": "x", "model": "gpt-image-1", "input_fidelity": "high"}]
    )
    table.validate(ImageParams(), edit=True)
    with pytest.raises(PromptTableError, match="input_fidelity"):
        table.validate(ImageParams(), edit=False)
    long_prompt = PromptTable.from_records([{"key": "a", "prompt": "x" * 32_001}])
    with pytest.raises(PromptTableError, match="prompt"):
        long_prompt.validate(ImageParams(), edit=True)


def test_validate_reports_file_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "key,prompt,size\na,x,auto\nb,y,999x999\n")
    with pytest.raises(PromptTableError, match=r"row 2 \(line 3\), key 'b': size='999x999'"):
        PromptTable.from_path(path).validate(ImageParams())
