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


def test_op_function_reaches_the_decorated_body() -> None:
    def body(context) -> None:  # type: ignore[no-untyped-def]
        return None

    asset = dg.multi_asset(specs=[dg.AssetSpec("internals_a")])(body)
    assert _dagster.op_function(asset) is body
    [mapped] = dg.map_asset_specs(lambda spec: spec.replace_attributes(group_name="g"), [asset])
    assert _dagster.op_function(mapped) is body


def test_run_time_resource_copies_go_through_with_updated_values() -> None:
    """GPTImageResource refuses literal keys except in the copies Dagster makes at run time, which
    it marks through ``_with_updated_values``; if Dagster stops using it, literal keys resolved from
    an EnvVar would be refused at run time, so this must fail first."""
    from dagster._config.pythonic_config.resource import ConfigurableResourceFactory

    assert hasattr(ConfigurableResourceFactory, "_with_updated_values")
    source = inspect.getsource(ConfigurableResourceFactory)
    assert "._with_updated_values(context.resource_config)" in source

    seen: list[bool] = []

    class Probe(_dagster.ResolvedConfigMarker, dg.ConfigurableResource):
        value: str = ""

        def __init__(self, **data: object) -> None:
            seen.append(_dagster.resolving_config())
            super().__init__(**data)

    @dg.asset(required_resource_keys={"probe"})
    def uses_probe(context) -> None:  # type: ignore[no-untyped-def]
        assert context.resources.probe.value == "x"

    assert dg.materialize([uses_probe], resources={"probe": Probe(value="x")}).success
    assert seen[0] is False
    assert True in seen[1:]


def test_data_version_constants_and_check_history() -> None:
    from dagster._core.definitions.data_version import DEFAULT_DATA_VERSION

    assert DEFAULT_DATA_VERSION.value == _dagster.UNOBSERVED_DATA_VERSION == "INITIAL"
    instance = dg.DagsterInstance.ephemeral()
    check_key = dg.AssetCheckKey(dg.AssetKey("nothing"), "image_valid")
    assert _dagster.previous_check_metadata(instance, check_key) == {}
    assert _dagster.latest_observed_versions(instance, dg.AssetKey("nothing"), ["a"]) == {}
