"""GPTImageComponent: YAML builds the factories' assets; YAML mistakes name file, field and fix.

In-process tests load defs.yaml files through Dagster's component tree (what ``dg check defs`` and
``dagster dev`` do); the ``slow`` tests run the ``dg`` CLI itself in a minimal project under tmp_path
(offline: the project layout needs no uv and no network).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import jsonschema
import pytest
import yaml
from _assets_support import SMALL, emulator_resources, materializations, materialize_range
from dagster.components.testing import DefsFolderSandbox

from dagster_gptimage import GPTImageResource, ImageStore, PromptTable
from dagster_gptimage._job import image_job
from dagster_gptimage.assets import image_edit_asset, image_generation_asset
from dagster_gptimage.component import (
    EditStep,
    GPTImageComponent,
    GPTImageComponentError,
    ImageStoreSpec,
    PromptTableSensorSpec,
    ResourceSpec,
    scaffold_text,
)

COMPONENT_TYPE = "dagster_gptimage.component.GPTImageComponent"
PUBLIC_TYPE = "dagster_gptimage.GPTImageComponent"
DG = Path(sys.executable).with_name("dg")
ANSI = re.compile(r"\x1b\[[0-9;]*m")

PROMPTS_CSV = (
    "key,prompt\nharbor,A harbor at dawn\nmeadow,A meadow in spring\ndesert,A desert at noon\n"
)


# --- a minimal dg project --------------------------------------------------------------------


class Project:
    """A create-dagster style project in a temporary folder (``src/<name>/defs``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = f"gptimage_test_{uuid.uuid4().hex[:10]}"
        self.defs = root / "src" / self.name / "defs"
        self.defs.mkdir(parents=True)
        (root / "pyproject.toml").write_text(
            textwrap.dedent(
                f"""\
                [project]
                name = "{self.name}"
                version = "0.1.0"
                requires-python = ">=3.10"
                dependencies = ["dagster-gptimage"]

                [build-system]
                requires = ["hatchling"]
                build-backend = "hatchling.build"

                [tool.dg]
                directory_type = "project"

                [tool.dg.project]
                root_module = "{self.name}"
                """
            )
        )
        package = root / "src" / self.name
        (package / "__init__.py").write_text("")
        (self.defs / "__init__.py").write_text("")
        (package / "definitions.py").write_text(
            textwrap.dedent(
                """\
                from pathlib import Path

                import dagster as dg


                @dg.definitions
                def defs():
                    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
                """
            )
        )

    def component(
        self,
        folder: str,
        attributes: Mapping[str, Any] | str,
        files: Mapping[str, str] | None = None,
        type_name: str = COMPONENT_TYPE,
    ) -> Path:
        target = self.defs / folder
        target.mkdir(parents=True, exist_ok=True)
        for name, text in (files or {}).items():
            (target / name).write_text(text)
        body = (
            attributes
            if isinstance(attributes, str)
            else yaml.safe_dump(dict(attributes), sort_keys=False)
        )
        text = f"type: {type_name}\n\nattributes:\n{textwrap.indent(body, '  ')}"
        (target / "defs.yaml").write_text(text)
        return target / "defs.yaml"

    def sandbox(self) -> DefsFolderSandbox:
        return DefsFolderSandbox(
            project_root=self.root, defs_folder_path=self.defs, project_name=self.name
        )

    def build(self) -> dg.Definitions:
        with self.sandbox().build_all_defs() as defs:
            return defs

    def error(self) -> str:
        """The component's error message when the definitions fail to load."""
        with pytest.raises(Exception) as raised:
            self.build()
        error: BaseException | None = raised.value
        while error is not None:
            if isinstance(error, GPTImageComponentError):
                return str(error)
            error = error.__cause__ or error.__context__
        raise AssertionError(f"no GPTImageComponentError in {raised.value!r}")


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path / "project")


@pytest.fixture
def no_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def with_resources(defs: dg.Definitions) -> dg.Definitions:
    """The project's resources, as a definitions.py would add them (for graph-level checks)."""
    return dg.Definitions.merge(
        defs,
        dg.Definitions(
            resources={
                "gptimage": GPTImageResource(provider="emulator"),
                "image_store": ImageStore(),
            }
        ),
    )


def basic(**extra: Any) -> dict[str, Any]:
    return {"name": "scenes", "prompts": "prompts.csv", "size": SMALL, "quality": "low", **extra}


# --- one implementation, two faces -------------------------------------------------------------


def test_yaml_builds_the_same_assets_as_the_python_factories(project: Project) -> None:
    project.component(
        "scenes",
        basic(
            output_format="webp",
            group_name="art",
            key_prefix=["gallery"],
            max_cost_usd=2.5,
            edits=[
                {"name": "scenes_night", "prompt": "Same scene at night", "quality": "low"},
                {
                    "name": "scenes_night_snow",
                    "sources": ["scenes_night", "scenes"],
                    "prompts": "snow.csv",
                    "automation": "eager",
                    "max_cost_usd": 1.0,
                },
            ],
        ),
        files={
            "prompts.csv": PROMPTS_CSV,
            "snow.csv": "key,prompt\nharbor,Add snow\nmeadow,Add snow\ndesert,Add rare snow\n",
        },
    )
    defs = with_resources(project.build())
    graph = defs.resolve_asset_graph()
    scenes, night, snow = (
        dg.AssetKey(["gallery", name]) for name in ("scenes", "scenes_night", "scenes_night_snow")
    )
    prompts = dg.AssetKey(["gallery", "scenes_prompts"])
    assert set(graph.get_all_asset_keys()) == {prompts, scenes, night, snow}

    table = PromptTable.from_path(project.defs / "scenes" / "prompts.csv")
    python = image_generation_asset(
        name="scenes",
        prompts=table,
        key_prefix=["gallery"],
        group_name="art",
        size=SMALL,
        quality="low",
        output_format="webp",
        max_cost_usd=2.5,
    )
    yaml_asset = defs.resolve_assets_def(scenes)
    assert yaml_asset.partitions_def == python.partitions_def
    assert yaml_asset.backfill_policy == python.backfill_policy
    yaml_spec, python_spec = yaml_asset.specs_by_key[scenes], python.specs_by_key[scenes]
    assert yaml_spec.kinds == python_spec.kinds == {"openai", "image"}
    assert yaml_spec.group_name == "art"
    assert yaml_spec.metadata["image_defaults"] == python_spec.metadata["image_defaults"]
    assert {c.name for c in yaml_asset.check_specs} == {c.name for c in python.check_specs}

    python_night = image_edit_asset(
        name="scenes_night", sources=[python], prompt="Same scene at night", quality="low"
    )
    night_spec = defs.resolve_assets_def(night).specs_by_key[night]
    assert (
        night_spec.metadata["edit_prompt"]
        == python_night.specs_by_key[python_night.key].metadata["edit_prompt"]
    )
    assert [dep.asset_key for dep in night_spec.deps] == [scenes]
    snow_spec = defs.resolve_assets_def(snow).specs_by_key[snow]
    assert [dep.asset_key for dep in snow_spec.deps] == [night, scenes]
    assert snow_spec.automation_condition is not None
    assert night_spec.automation_condition is None
    assert not project.build().resources


def test_yaml_pipeline_materializes_and_reruns_from_cache(project: Project, tmp_path: Path) -> None:
    project.component(
        "scenes",
        basic(edits=[{"name": "scenes_night", "prompt": "Same scene at night", "quality": "low"}]),
        files={"prompts.csv": PROMPTS_CSV},
    )
    defs = project.build()
    resources, emulator = emulator_resources(tmp_path / "store")
    assets = list(defs.assets or [])
    instance = dg.DagsterInstance.ephemeral()

    first = materialize_range(assets, resources, "harbor", "desert", instance=instance)
    assert first.success
    assert emulator.stats.requests == 6
    night = materializations(instance, dg.AssetKey("scenes_night"))
    assert sorted(night) == ["desert", "harbor", "meadow"]
    assert (tmp_path / "store" / "scenes_night" / "meadow.png").is_file()

    second = materialize_range(assets, resources, "harbor", "desert", instance=instance)
    assert second.success
    assert emulator.stats.requests == 6
    latest = materializations(instance, dg.AssetKey("scenes"), run_id=second.run_id)
    assert all(m.metadata["cached"].value is True for m in latest.values())


def test_dynamic_partitioning_adds_the_sensor(project: Project, tmp_path: Path) -> None:
    project.component(
        "scenes",
        basic(
            partitioning="dynamic",
            max_partitions_per_run=2,
            sensor={
                "name": "scene_rows",
                "minimum_interval_seconds": 15,
                "default_status": "running",
            },
        ),
        files={"prompts.csv": PROMPTS_CSV},
    )
    defs = with_resources(project.build())
    [sensor] = list(defs.sensors or [])
    assert sensor.name == "scene_rows"
    assert sensor.minimum_interval_seconds == 15
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    asset = defs.resolve_assets_def("scenes")
    assert isinstance(asset.partitions_def, dg.DynamicPartitionsDefinition)

    instance = dg.DagsterInstance.ephemeral()
    result = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
    assert isinstance(result, dg.SensorResult)
    [added] = result.dynamic_partitions_requests or []
    assert isinstance(added, dg.AddDynamicPartitionsRequest)
    assert list(added.partition_keys) == ["harbor", "meadow", "desert"]
    assert len(result.run_requests or []) == 2


def test_dynamic_default_sensor_is_stopped(project: Project) -> None:
    project.component("scenes", basic(partitioning="dynamic"), files={"prompts.csv": PROMPTS_CSV})
    [sensor] = list(project.build().sensors or [])
    assert sensor.name == "scenes_prompt_table_sensor"
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED


# --- resources -------------------------------------------------------------------------------


def test_resource_and_store_blocks_provide_keyed_resources(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPTIMAGE_TEST_KEY", "sk-test-not-a-real-key")
    monkeypatch.setenv("GPTIMAGE_TEST_S3_SECRET", "s3-secret-value")
    project.component(
        "scenes",
        basic(
            resource={
                "provider": "openai",
                "api_key_env": "GPTIMAGE_TEST_KEY",
                "max_concurrency": 3,
                "images_per_minute": 30,
            },
            store={
                "base_url": "images",
                "storage_options": {"endpoint_url": "http://127.0.0.1:9"},
                "storage_options_env": {"secret": "GPTIMAGE_TEST_S3_SECRET"},
            },
        ),
        files={"prompts.csv": PROMPTS_CSV},
    )
    defs = project.build()
    resources = dict(defs.resources or {})
    assert set(resources) == {"gptimage__scenes", "image_store__scenes"}
    api = resources["gptimage__scenes"]
    assert isinstance(api, GPTImageResource)
    assert api.provider == "openai"
    assert api.max_concurrency == 3
    assert api.images_per_minute == 30
    assert isinstance(api.api_key, dg.EnvVar)
    assert api.api_key.env_var_name == "GPTIMAGE_TEST_KEY"
    store = resources["image_store__scenes"]
    assert isinstance(store, ImageStore)
    assert store.resolved_base_url == str(project.root / "images")
    assert isinstance(store.storage_options["secret"], dg.EnvVar)
    shown = repr(api) + repr(store)
    assert "sk-test-not-a-real-key" not in shown
    assert "s3-secret-value" not in shown
    asset = defs.resolve_assets_def("scenes")
    assert asset.required_resource_keys >= {"gptimage__scenes", "image_store__scenes"}


def test_provider_auto_follows_the_key(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    project.component(
        "scenes",
        basic(resource={"provider": "auto"}),
        files={"prompts.csv": PROMPTS_CSV},
    )
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    offline = project.build().resources["gptimage__scenes"]
    assert offline.provider == "emulator"
    assert offline.api_key is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    online = project.build().resources["gptimage__scenes"]
    assert online.provider == "openai"
    assert isinstance(online.api_key, dg.EnvVar)
    assert online.api_key.env_var_name == "OPENAI_API_KEY"


def test_components_with_own_resources_do_not_collide(project: Project, no_api_key: None) -> None:
    for name in ("first", "second"):
        project.component(
            name,
            {
                "name": name,
                "prompts": "prompts.csv",
                "resource": {"provider": "emulator"},
                "store": {"base_url": f"store_{name}"},
            },
            files={"prompts.csv": PROMPTS_CSV},
        )
    defs = project.build()
    assert set(defs.resources or {}) == {
        "gptimage__first",
        "image_store__first",
        "gptimage__second",
        "image_store__second",
    }


def test_explicit_resource_keys_are_used(project: Project) -> None:
    project.component(
        "scenes",
        basic(resource_key="openai_images", store_key="bucket"),
        files={"prompts.csv": PROMPTS_CSV},
    )
    defs = project.build()
    [asset] = [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
    assert {"openai_images", "bucket"} <= asset.required_resource_keys


# --- mistakes: file, field and fix -------------------------------------------------------------


def assert_names(message: str, yaml_path: Path, field: str, fix: str) -> None:
    assert str(yaml_path) in message, message
    assert field in message, message
    assert "Fix: " in message, message
    assert fix in message.split("Fix: ", 1)[1], message


def test_missing_table_names_the_file_and_suggests_the_close_one(project: Project) -> None:
    path = project.component(
        "scenes", basic(prompts="promts.csv"), files={"prompts.csv": PROMPTS_CSV}
    )
    message = project.error()
    assert_names(message, path, "attributes.prompts", "did you mean 'prompts.csv'")
    assert "does not exist" in message
    assert re.search(r"defs\.yaml:\d+ - attributes\.prompts", message)


def test_bad_row_lists_row_key_and_table(project: Project) -> None:
    path = project.component(
        "scenes",
        basic(),
        files={
            "prompts.csv": "key,prompt,size\nharbor,A harbor,\nmeadow,A meadow,1000x1000\ndesert,x,huge\n"
        },
    )
    message = project.error()
    assert_names(
        message, path, "attributes.prompts", "correct the rows listed above in prompts.csv"
    )
    assert "has 2 invalid rows" in message
    assert "row 2 (line 3), key 'meadow': size='1000x1000'" in message
    assert "multiples of 16" in message
    assert "row 3 (line 4), key 'desert': size='huge'" in message


def test_bad_key_is_a_bad_row(project: Project) -> None:
    path = project.component(
        "scenes", basic(), files={"prompts.csv": "key,prompt\nharbor,A harbor\nbad/key,x\n"}
    )
    message = project.error()
    assert_names(message, path, "attributes.prompts", "correct the rows listed above")
    assert "row 2 (line 3), key 'bad/key': key contains '/'" in message


def test_row_invalid_with_the_defaults_blames_the_table(project: Project) -> None:
    path = project.component(
        "scenes",
        basic(image_model="gpt-image-1", size="1024x1024"),
        files={
            "prompts.csv": "key,prompt,size\nharbor,A harbor,1536x1024\nmeadow,A meadow,1024x640\n"
        },
    )
    message = project.error()
    assert_names(message, path, "attributes.prompts", "change the defaults")
    assert "'meadow'" in message


def test_size_the_model_refuses_blames_size(project: Project) -> None:
    path = project.component("scenes", basic(size="1000x1000"), files={"prompts.csv": PROMPTS_CSV})
    message = project.error()
    assert_names(message, path, "attributes.size", "set size to auto or an accepted size")
    assert "multiples of 16" in message
    assert "size: 1000x1000" in message


def test_unknown_model_lists_the_models(project: Project) -> None:
    path = project.component(
        "scenes", basic(image_model="dall-e-3"), files={"prompts.csv": PROMPTS_CSV}
    )
    message = project.error()
    assert_names(message, path, "attributes.image_model", "gpt-image-2")


def test_edit_step_mistakes(project: Project) -> None:
    path = project.component(
        "scenes",
        basic(edits=[{"name": "night", "sources": ["scene"], "prompt": "At night"}]),
        files={"prompts.csv": PROMPTS_CSV},
    )
    assert_names(project.error(), path, "attributes.edits.0.sources.0", "did you mean 'scenes'")

    path = project.component(
        "scenes",
        basic(edits=[{"name": "night", "prompt": "At night", "prompts": "x.csv"}]),
        files={"prompts.csv": PROMPTS_CSV},
    )
    assert_names(project.error(), path, "attributes.edits.0", "give prompt: <text> or prompts:")

    path = project.component(
        "scenes",
        basic(
            edits=[
                {"name": "later", "sources": ["night"], "prompt": "x"},
                {"name": "night", "prompt": "At night"},
            ]
        ),
        files={"prompts.csv": PROMPTS_CSV},
    )
    message = project.error()
    assert_names(message, path, "attributes.edits.0.sources.0", "use one of: scenes")
    assert "a step can only edit earlier steps" in message

    path = project.component(
        "scenes",
        basic(edits=[{"name": "scenes", "prompt": "x"}]),
        files={"prompts.csv": PROMPTS_CSV},
    )
    assert_names(project.error(), path, "attributes.edits.0.name", "its own name")

    path = project.component(
        "scenes",
        basic(edits=[{"name": "night", "prompt": "x", "mask": "mask.png"}]),
        files={"prompts.csv": PROMPTS_CSV},
    )
    assert_names(project.error(), path, "attributes.edits.0.mask", "PNG path relative to")


def test_edit_table_missing_keys_is_reported_on_the_step(project: Project) -> None:
    path = project.component(
        "scenes",
        basic(edits=[{"name": "night", "prompts": "night.csv"}]),
        files={"prompts.csv": PROMPTS_CSV, "night.csv": "key,prompt\nharbor,At night\n"},
    )
    message = project.error()
    assert_names(message, path, "attributes.edits.0", "change the declaration")
    assert "meadow, desert" in message


def test_a_static_table_gets_its_sensor_when_asked(project: Project) -> None:
    """Issue 13: the sensor follows static tables too (it observes changed rows)."""
    project.component(
        "scenes", basic(sensor={"minimum_interval_seconds": 30}), files={"prompts.csv": PROMPTS_CSV}
    )
    defs = with_resources(project.build())
    assert [sensor.name for sensor in defs.sensors or []] == ["scenes_prompt_table_sensor"]
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("scenes")).parent_keys == {dg.AssetKey("scenes_prompts")}


def test_gallery_and_automation_blocks(project: Project) -> None:
    project.component(
        "scenes",
        basic(automation="eager", prompts_key="rows", gallery={"thumbnail_format": "jpeg"}),
        files={"prompts.csv": PROMPTS_CSV},
    )
    defs = with_resources(project.build())
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("scenes")).parent_keys == {dg.AssetKey("rows")}
    assert graph.get(dg.AssetKey("scenes")).automation_condition is not None
    assert graph.get(dg.AssetKey("scenes_gallery")).parent_keys == {dg.AssetKey("scenes")}


def test_mode_reaches_the_assets_and_edit_steps_inherit_it(project: Project) -> None:
    project.component(
        "scenes",
        basic(
            mode="batch",
            resource={"provider": "emulator", "batch_poll_interval_s": 5},
            edits=[
                {"name": "night", "prompt": "at night"},
                {"name": "dusk", "prompt": "at dusk", "mode": "sync"},
            ],
        ),
        files={"prompts.csv": PROMPTS_CSV},
    )
    defs = with_resources(project.build())
    graph = defs.resolve_asset_graph()
    modes = {}
    for name in ("scenes", "night", "dusk"):
        job = image_job(graph.get(dg.AssetKey(name)).assets_def)
        assert job is not None
        modes[name] = job.mode
    assert modes == {"scenes": "batch", "night": "batch", "dusk": "sync"}
    resource = (defs.resources or {})["gptimage__scenes"]
    assert resource.batch_poll_interval_s == 5


def test_secrets_in_yaml_are_refused_without_being_shown(project: Project) -> None:
    secret = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    path = project.component(
        "scenes",
        basic(resource={"provider": "openai", "api_key_env": secret}),
        files={"prompts.csv": PROMPTS_CSV},
    )
    message = project.error()
    assert_names(message, path, "attributes.resource.api_key_env", "never the key itself")
    assert "sk-proj" not in message

    path = project.component(
        "scenes",
        basic(store={"base_url": "images", "storage_options": {"secret": "abc123secretvalue"}}),
        files={"prompts.csv": PROMPTS_CSV},
    )
    message = project.error()
    assert_names(message, path, "attributes.store.storage_options.secret", "storage_options_env")
    assert "abc123secretvalue" not in message


def test_azure_needs_a_key_variable(project: Project) -> None:
    path = project.component(
        "scenes", basic(resource={"provider": "azure"}), files={"prompts.csv": PROMPTS_CSV}
    )
    assert_names(project.error(), path, "attributes.resource.api_key_env", "set api_key_env")


def test_refused_values_at_load_time_point_at_the_yaml(project: Project) -> None:
    """Without `dg check yaml` (dagster dev, definitions validate), a refused value still names the
    file, line, field and fix."""
    path = project.component("scenes", basic(quality="mega"), files={"prompts.csv": PROMPTS_CSV})
    message = project.error()
    assert_names(message, path, "attributes.quality", "use one of: low, medium, high, auto")
    assert re.search(r"defs\.yaml:\d+ - attributes\.quality: 'mega' is not one of", message)

    path = project.component(
        "scenes",
        basic(edits=[{"name": "night", "prompt": "At night", "automation": "always"}]),
        files={"prompts.csv": PROMPTS_CSV},
    )
    assert_names(
        project.error(), path, "attributes.edits.0.automation", "use one of: eager, on_missing"
    )

    # Constraints Dagster's own attribute model checks (ranges) fail before the component loads,
    # with Dagster's message: file, line and field.
    path = project.component("scenes", basic(max_cost_usd=-1), files={"prompts.csv": PROMPTS_CSV})
    with pytest.raises(Exception) as raised:
        project.build()
    chain = []
    error: BaseException | None = raised.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    text = "\n".join(chain)
    assert f"attributes.max_cost_usd.nullable[constrained-float] at {path}:8" in text
    assert "greater than or equal to 0" in text


# --- the YAML schema (what `dg check yaml` validates) -----------------------------------------


def schema_errors(attributes: Mapping[str, Any]) -> dict[str, str]:
    schema = GPTImageComponent.model().model_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    return {
        ".".join(str(p) for p in error.absolute_path): error.message
        for error in validator.iter_errors(dict(attributes))
    }


def test_schema_accepts_a_full_declaration() -> None:
    attributes = yaml.safe_load(scaffold_text("scenes"))["attributes"]
    attributes.update(
        partitioning="dynamic",
        sensor={"minimum_interval_seconds": 30, "default_status": "running"},
        key_prefix=["a", "b"],
        tags={"team": "art"},
        output_compression=80,
        size="{{ env.SIZE }}",
    )
    assert schema_errors(attributes) == {}
    assert schema_errors({**attributes, "key_prefix": "images"}) == {}


def test_schema_names_the_bad_field_and_the_accepted_values() -> None:
    errors = schema_errors(
        {
            "name": "scenes",
            "prompts": "p.csv",
            "model": "gpt-image-2",
            "quality": "ultra",
            "size": "1000by1000",
            "max_cost_usd": "lots",
            "resource": {"provider": "openai", "api_kee_env": "X"},
            "edits": [{"name": "night", "surces": ["scenes"], "automation": "always"}],
        }
    )
    assert "'model' was unexpected" in errors[""]
    assert errors["quality"] == "'ultra' is not one of ['low', 'medium', 'high', 'auto', None]"
    assert "'1000by1000' does not match" in errors["size"]
    assert "'lots' is not of type 'number'" in errors["max_cost_usd"]
    assert "'api_kee_env' was unexpected" in errors["resource"]
    assert "'surces' was unexpected" in errors["edits.0"]
    assert errors["edits.0.automation"] == "'always' is not one of ['eager', 'on_missing', None]"


def test_schema_keeps_descriptions() -> None:
    schema = GPTImageComponent.model().model_json_schema()
    assert "relative to this defs.yaml" in schema["properties"]["prompts"]["description"]
    assert "auto" in schema["$defs"]["ResourceSpecModel"]["properties"]["provider"]["description"]


@pytest.mark.parametrize(
    "model", [GPTImageComponent, EditStep, ResourceSpec, ImageStoreSpec, PromptTableSensorSpec]
)
def test_yaml_reference_documents_every_field(model: type) -> None:
    reference = (Path(__file__).parents[1] / "docs" / "yaml-reference.md").read_text()
    missing = [name for name in model.model_fields if f"`{name}`" not in reference]
    assert missing == []


# --- scaffolding ------------------------------------------------------------------------------


def test_scaffold_writes_a_working_pipeline(
    project: Project, no_api_key: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = project.sandbox()
    target = sandbox.scaffold_component(GPTImageComponent, defs_path="city_views")
    text = (target / "defs.yaml").read_text()
    emulator_name = f"scaffold-{uuid.uuid4().hex[:8]}"
    (target / "defs.yaml").write_text(
        text.replace("provider: auto\n", f"provider: auto\n    emulator_name: {emulator_name}\n")
    )
    assert text.startswith(f"type: {COMPONENT_TYPE}\n")
    assert "name: city_views\n" in text
    assert (target / "prompts.csv").read_text().startswith("key,prompt\n")
    assert schema_errors(yaml.safe_load(text)["attributes"]) == {}
    assert emulator_name in (target / "defs.yaml").read_text()

    defs = project.build()
    assert {k.to_user_string() for k in defs.resolve_all_asset_keys()} == {
        "city_views_prompts",
        "city_views",
        "city_views_watercolor",
    }
    resources = dict(defs.resources or {})
    assert resources["gptimage__city_views"].provider == "emulator"
    result = materialize_range(
        list(defs.assets or []),
        resources,
        "lighthouse",
        "bicycle",
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    store = project.root / "gptimage_store"
    assert sorted(p.name for p in (store / "city_views_watercolor").glob("*.png")) == [
        "bicycle.png",
        "lighthouse.png",
        "teapot.png",
    ]


def test_scaffold_name_from_an_awkward_folder(project: Project) -> None:
    target = project.sandbox().scaffold_component(GPTImageComponent, defs_path="2026-posters")
    assert "name: images_2026_posters\n" in (target / "defs.yaml").read_text()


# --- the dg CLI, offline ----------------------------------------------------------------------


@pytest.fixture
def dg_env(tmp_path: Path, project: Project) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(
        DAGSTER_HOME=str(home),
        PYTHONPATH=os.pathsep.join(
            [str(project.root / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
        NO_COLOR="1",
        COLUMNS="200",
    )
    return env


def run_dg(project: Project, env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [str(DG), *args],
        cwd=project.root,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    completed.stdout = ANSI.sub("", completed.stdout)
    completed.stderr = ANSI.sub("", completed.stderr)
    return completed


@pytest.mark.slow
def test_dg_list_components_shows_the_component(project: Project, dg_env: dict[str, str]) -> None:
    completed = run_dg(project, dg_env, "list", "components", "--json")
    assert completed.returncode == 0, completed.stderr
    keys = {item["key"] for item in json.loads(completed.stdout)["items"]}
    assert PUBLIC_TYPE in keys


@pytest.mark.slow
def test_dg_scaffold_defs_passes_dg_check_defs(project: Project, dg_env: dict[str, str]) -> None:
    completed = run_dg(project, dg_env, "scaffold", "defs", PUBLIC_TYPE, "street_scenes")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    target = project.defs / "street_scenes"
    assert (target / "defs.yaml").read_text().startswith(f"type: {PUBLIC_TYPE}\n")
    assert (target / "prompts.csv").is_file()
    checked = run_dg(project, dg_env, "check", "defs", "--use-active-venv")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully." in checked.stdout
    listed = run_dg(project, dg_env, "list", "defs", "--json")
    assert listed.returncode == 0, listed.stderr
    keys = {asset["asset_key"] for asset in json.loads(listed.stdout)["assets"]}
    assert keys == {"street_scenes_prompts", "street_scenes", "street_scenes_watercolor"}


@pytest.mark.slow
def test_dg_check_yaml_points_at_each_mistake(project: Project, dg_env: dict[str, str]) -> None:
    path = project.component(
        "scenes",
        textwrap.dedent(
            """\
            name: scenes
            prompts: prompts.csv
            model: gpt-image-2
            quality: ultra
            size: 1000by1000
            edits:
              - name: scenes_night
                prompt: At night
                surces: [scenes]
            """
        ),
        files={"prompts.csv": PROMPTS_CSV},
    )
    completed = run_dg(project, dg_env, "check", "yaml")
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0
    assert f"{path}:6 - {COMPONENT_TYPE} attributes.model" in output
    assert "'model' was unexpected" in output
    assert f"{path}:7 - {COMPONENT_TYPE} attributes.quality" in output
    assert "'ultra' is not one of ['low', 'medium', 'high', 'auto', None]" in output
    assert f"{path}:8 - {COMPONENT_TYPE} attributes.size" in output
    assert f"{path}:12 - {COMPONENT_TYPE} attributes.edits.0.surces" in output


@pytest.mark.slow
def test_dg_check_defs_reports_a_bad_row(project: Project, dg_env: dict[str, str]) -> None:
    path = project.component(
        "scenes",
        basic(),
        files={"prompts.csv": "key,prompt,quality\nharbor,A harbor,best\nmeadow,A meadow,\n"},
    )
    completed = run_dg(project, dg_env, "check", "defs", "--use-active-venv")
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0
    assert f"{path}:5 - attributes.prompts" in output
    assert "row 1 (line 2), key 'harbor': quality='best'" in output
    assert "Fix: correct the rows listed above" in output
