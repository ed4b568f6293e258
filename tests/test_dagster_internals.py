"""The Dagster internals ``dagster_gptimage._dagster`` relies on are still where, and what, we expect.

A Dagster upgrade that moves or reshapes one of them fails here, naming it, instead of somewhere
deep in a run or as a silently vaguer YAML schema.
"""

from __future__ import annotations

import inspect

import dagster as dg
import jsonschema

from dagster_gptimage import _dagster
from dagster_gptimage.component import EditStep, GPTImageComponent


def test_resolvable_is_dagsters_public_one_and_derives_from_pydantic_fields() -> None:
    assert _dagster.Resolvable is dg.Resolvable
    assert issubclass(_dagster.ResolutionException, Exception)
    assert isinstance(inspect.getattr_static(dg.Resolvable, "model"), classmethod)
    # Fields inherited from a pydantic base (RequestDefaults) are part of the derived model.
    assert {"quality", "input_fidelity", "resolution"} <= set(EditStep.model().model_fields)
    assert "input_fidelity" not in GPTImageComponent.model().model_fields


def test_derived_schema_is_precise() -> None:
    schema = GPTImageComponent.model().model_json_schema()
    quality = schema["properties"]["quality"]
    assert quality["enum"] == ["low", "medium", "high", "auto", None]
    assert "anyOf" not in quality
    assert quality["description"]
    assert schema["properties"]["output_compression"]["maximum"] == 100
    assert schema["additionalProperties"] is False
    order = schema["ui:order"]
    assert order.index("image_model") + 1 == order.index("size")
    validator = jsonschema.Draft202012Validator(schema)
    bad = {"name": "a", "prompts": "p.csv", "quality": "ultra", "size": "huge"}
    assert {e.path[-1] for e in validator.iter_errors(bad)} == {"quality", "size"}


def test_event_and_tag_internals_are_where_we_import_them_from() -> None:
    assert callable(_dagster.DagsterEvent.step_output_event)
    for tag in (
        _dagster.ASSET_PARTITION_RANGE_START_TAG,
        _dagster.ASSET_PARTITION_RANGE_END_TAG,
        _dagster.DATA_VERSION_TAG,
        _dagster.CODE_VERSION_TAG,
    ):
        assert isinstance(tag, str)
        assert tag.startswith("dagster/")
