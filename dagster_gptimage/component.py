"""GPTImageComponent: the YAML face of the asset factories.

A ``defs.yaml`` declares a prompt table, request defaults and any number of edit steps; the
component calls ``image_generation_asset`` / ``image_edit_asset`` / ``prompt_table_sensor`` (one
implementation, two faces), so a YAML pipeline behaves exactly like a Python one. The request fields
are not declared here: they are those of :class:`~dagster_gptimage.models.GenerationDefaults` and
:class:`~dagster_gptimage.models.RequestDefaults`, derived from ``ImageParams``.

Resources: without a ``resource:`` / ``store:`` block the assets use the project's ``gptimage`` and
``image_store`` resources (or ``resource_key`` / ``store_key``). With a block the component provides
its own resource under a key derived from its asset key (``gptimage__<name>``,
``image_store__<name>``), because Dagster refuses two different resources under one key and several
components (or Python definitions) would otherwise collide. Secrets never appear in YAML: the API
key and storage credentials are read from environment variables named in the YAML.

Mistakes fail ``dg check yaml`` (schema: unknown fields, values outside an enum, a malformed size)
or ``dg check defs``: the factories refuse what cannot work (a bad row, a size the model refuses, a
mask that is not an image) with errors naming their argument, and ``_YAML_FIELDS`` turns that
argument into the YAML field, so the message names the file, the line, the field and the fix.

No ``from __future__ import annotations``: Dagster derives the YAML schema from these annotations.
"""

import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import dagster as dg
from pydantic import BaseModel, Field, ValidationError
from typing_extensions import Self

from dagster_gptimage._dagster import PreciseSchema as _PreciseSchema
from dagster_gptimage._dagster import ResolutionException
from dagster_gptimage._scaffold import GPTImageComponentScaffolder, identifier, scaffold_text
from dagster_gptimage._yaml import GPTImageComponentError, YamlSite
from dagster_gptimage.assets import image_edit_asset, image_generation_asset
from dagster_gptimage.errors import DefinitionError, InvalidRequestError, short_repr
from dagster_gptimage.gallery import image_gallery_asset
from dagster_gptimage.models import (
    DEFAULT_FIELDS,
    PRESET_SIZES,
    GenerationDefaults,
    RequestDefaults,
)
from dagster_gptimage.prompt_rows import prompt_rows_asset
from dagster_gptimage.prompts import PromptTableError, TableFormat
from dagster_gptimage.resource import GPTImageResource
from dagster_gptimage.sensors import prompt_table_sensor
from dagster_gptimage.settings import ClientOptions
from dagster_gptimage.storage import ImageStore

__all__ = [
    "EditStep",
    "GPTImageComponent",
    "GPTImageComponentError",
    "GPTImageComponentScaffolder",
    "GallerySpec",
    "ImageStoreSpec",
    "PromptTableSensorSpec",
    "ResourceSpec",
    "scaffold_text",
]

Automation = Literal["eager", "on_missing"]

SIZE_PATTERN = r"^(auto|[0-9]+x[0-9]+|[0-9]+:[0-9]+|.*\{\{.*\}\}.*)$"
"""What ``dg check yaml`` accepts as a size: auto, WxH, W:H (gateways) or a template. Which sizes a
model accepts is checked when the definitions load."""

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_OPTION = re.compile(r"(^key$|secret|password|token|credential|account_key|sas)", re.I)
_SIZE_EXAMPLES = ", ".join(PRESET_SIZES)

_YAML_FIELDS: Mapping[str, str] = {
    **{name: name for name in DEFAULT_FIELDS},
    "model": "image_model",
    "n": "prompts",
    "prompt": "prompt",
    "prompts": "prompts",
    "mask": "mask",
    "mask_column": "mask_column",
    "sources": "sources",
    "partitioning": "partitioning",
    "max_cost_usd": "max_cost_usd",
    "max_partitions_per_run": "max_partitions_per_run",
    "mode": "mode",
    "asset": "sensor",
}
"""The YAML field behind each argument a factory may blame (``DefinitionError.field``,
``InvalidRequestError.field``), relative to the step (or, when the step does not set it, the
component field it inherits). Request fields keep their names; ``model`` is ``image_model``
because ``Resolvable.model()`` owns that name; ``n`` only comes from table rows."""

_YAML_FIXES: Mapping[str, str] = {
    "size": f"set size to auto or an accepted size, e.g. {_SIZE_EXAMPLES}",
    "mask": "give a PNG path relative to {folder}, or a URL",
    "n": "remove the n column from the table, or set it to 1",
}
"""Fixes worded for the YAML where the factory's own would speak Python."""

_T = TypeVar("_T")


class ResourceSpec(_PreciseSchema, ClientOptions, dg.Model):
    """The component's own GPTImageResource (omit the block to use the project's resource).

    Its fields are the client's settings (``ClientSettings``), with the key named by
    ``api_key_env`` instead of written, and ``provider`` also accepting ``auto``."""

    provider: Literal["auto", "openai", "azure", "gateway", "emulator"] = Field(  # pyright: ignore[reportIncompatibleVariableOverride]
        default="openai",
        description=(
            "openai, azure, gateway (OpenAI-compatible), emulator (offline, placeholder images, "
            "no cost) or auto: openai when the api_key_env variable is set, else the emulator "
            "(for demos and CI; use openai in production)."
        ),
    )
    api_key_env: str | None = Field(
        default=None,
        description=(
            "Name of the environment variable holding the API key (never the key itself). "
            "Default: OPENAI_API_KEY for openai/auto; required for azure and gateway."
        ),
    )


class ImageStoreSpec(_PreciseSchema, dg.Model):
    """The component's own ImageStore (omit the block to use the project's ``image_store``)."""

    base_url: str | None = Field(
        default=None,
        description=(
            "Local folder or fsspec URL (s3://bucket/prefix …). Relative paths are relative to the "
            "project root. Default: $DAGSTER_HOME/storage/gptimage."
        ),
    )
    storage_options: dict[str, Any] | None = Field(
        default=None,
        description="Non-secret fsspec options, e.g. endpoint_url or region_name.",
    )
    storage_options_env: dict[str, str] | None = Field(
        default=None,
        description=(
            "Secret fsspec options read from environment variables: option name -> variable "
            "name, e.g. {key: AWS_ACCESS_KEY_ID, secret: AWS_SECRET_ACCESS_KEY}."
        ),
    )


class PromptTableSensorSpec(_PreciseSchema, dg.Model):
    """The sensor that follows the prompt table: it observes new and changed rows (their data
    versions) and, for a dynamic table, adds new rows' keys as partitions."""

    name: str | None = Field(
        default=None, description="Sensor name. Default: <asset>_prompt_table_sensor."
    )
    minimum_interval_seconds: int = Field(
        default=60, ge=1, description="How often the table is re-read."
    )
    default_status: Literal["running", "stopped"] = Field(
        default="stopped",
        description="Whether the sensor runs as soon as the code loads (running) or waits to be "
        "turned on in the UI (stopped).",
    )


class GallerySpec(_PreciseSchema, dg.Model):
    """A static HTML gallery of every image asset of this component (see docs/gallery.md)."""

    name: str | None = Field(default=None, description="Asset name. Default: <name>_gallery.")
    title: str | None = Field(default=None, description="Page title. Default: the asset name.")
    thumbnail_size: int = Field(
        default=256, ge=32, le=1024, description="Longer side of the thumbnails, in pixels."
    )
    thumbnail_format: Literal["webp", "jpeg"] = Field(
        default="webp", description="Thumbnail format."
    )
    automation: Literal["eager"] | None = Field(
        default=None,
        description="eager: rebuild whenever an image is materialized. Default: manual.",
    )


class EditStep(_PreciseSchema, dg.Model, RequestDefaults):
    """An edit asset downstream of the generation asset or of earlier edit steps. Request fields
    (size, quality …, input_fidelity) are those of ``RequestDefaults``."""

    yaml_patterns: ClassVar[Mapping[str, str]] = {"size": SIZE_PATTERN}
    yaml_order_after: ClassVar[str | None] = "image_model"

    name: str = Field(description="Asset name of this step (letters, digits, underscores).")
    sources: list[str] | None = Field(
        default=None,
        description=(
            "Names of the images to edit, in order: the generation asset's name or earlier edit "
            "steps' names. Default: the generation asset."
        ),
    )
    prompt: str | None = Field(default=None, description="One edit prompt for every partition.")
    prompts: str | None = Field(
        default=None,
        description=(
            "Per-key edit prompts: a table path relative to this defs.yaml's folder, or a URL. "
            "Give prompt or prompts."
        ),
    )
    prompts_format: TableFormat | None = Field(
        default=None, description="Table format when the extension does not tell."
    )
    key_column: str = Field(default="key", description="Column holding the partition key.")
    prompt_column: str = Field(default="prompt", description="Column holding the prompt.")
    mask: str | None = Field(
        default=None,
        description="A PNG mask for every partition (path relative to this file, or a URL).",
    )
    mask_column: str | None = Field(
        default=None, description="Column of the prompts table holding a per-key mask path."
    )
    image_model: str | None = Field(
        default=None, description="Model of this step. Default: the component's image_model."
    )
    automation: Automation | None = Field(
        default=None,
        description=(
            "eager: materialize each partition when its sources update (needs the automation "
            "sensor); on_missing: only partitions never materialized. Default: manual."
        ),
    )
    max_cost_usd: float | None = Field(
        default=None, ge=0, description="Budget per run. Default: the component's max_cost_usd."
    )
    mode: Literal["sync", "batch"] | None = Field(
        default=None,
        description="sync or batch (the Batch API: half price, within 24 hours). Default: the "
        "component's mode.",
    )
    description: str | None = None

    def request_params(self) -> dict[str, Any]:
        """The request defaults this step sets."""
        return {name: getattr(self, name) for name in RequestDefaults.model_fields}


@dg.scaffold_with(GPTImageComponentScaffolder)
class GPTImageComponent(dg.Component, _PreciseSchema, dg.Model, GenerationDefaults):
    """Partitioned images from a prompt table with GPT image models, plus edit steps downstream.

    One partition per table row (static, or dynamic with a sensor that adds new rows), images and
    sidecar JSON in an ImageStore, cost/latency/tokens metadata per partition, cached reruns that
    cost nothing. The same assets as ``image_generation_asset`` / ``image_edit_asset``; the request
    fields (size, quality, output_format …) are those of ``GenerationDefaults``.
    """

    yaml_patterns: ClassVar[Mapping[str, str]] = {"size": SIZE_PATTERN}
    yaml_order_after: ClassVar[str | None] = "image_model"

    name: str = Field(description="Asset name of the generated images.")
    prompts: str = Field(
        description=(
            "Prompt table: a CSV, JSONL, Parquet or YAML file path relative to this defs.yaml's "
            "folder, or an fsspec URL. Columns: key, prompt, and optional per-row overrides."
        )
    )
    prompts_format: TableFormat | None = Field(
        default=None, description="Table format when the extension does not tell."
    )
    key_column: str = Field(default="key", description="Column holding the partition key.")
    prompt_column: str = Field(default="prompt", description="Column holding the prompt.")
    description: str | None = Field(default=None, description="Asset description.")
    image_model: str | None = Field(
        default=None,
        description=(
            "gpt-image-2, gpt-image-1.5, gpt-image-1 or gpt-image-1-mini. Default: the resource's "
            "model (gpt-image-2)."
        ),
    )
    partitioning: Literal["static", "dynamic"] = Field(
        default="static",
        description=(
            "static: partitions fixed when the code loads; dynamic: a sensor adds new rows' keys "
            "and runs them without a code reload."
        ),
    )
    sensor: PromptTableSensorSpec | None = Field(
        default=None,
        description=(
            "The sensor following the prompt table (always there for dynamic tables; for static "
            "ones, give this block to observe changed rows)."
        ),
    )
    automation: Automation | None = Field(
        default=None,
        description=(
            "eager: regenerate each partition whose prompt row changed, was added, or was fixed "
            "after a failure (needs the sensor and the automation condition sensor); on_missing: "
            "only partitions never materialized. Default: manual."
        ),
    )
    prompts_key: str | None = Field(
        default=None,
        description=(
            "Asset name of the prompt rows (one data version per row), under key_prefix. "
            "Default: <name>_prompts."
        ),
    )
    gallery: GallerySpec | None = Field(
        default=None, description="Add a gallery of this component's images."
    )
    max_cost_usd: float | None = Field(
        default=None, ge=0, description="Budget per run in USD (estimate checked before sending)."
    )
    max_partitions_per_run: int | None = Field(
        default=None,
        ge=1,
        description="Split backfills into runs of at most this many partitions. Default: one run.",
    )
    mode: Literal["sync", "batch"] = Field(
        default="sync",
        description="sync: one request per partition, images within minutes; batch: OpenAI's "
        "Batch API, half price, images within 24 hours (openai and emulator providers).",
    )
    group_name: str | None = None
    key_prefix: str | list[str] | None = Field(
        default=None, description="Asset key prefix of every asset of this component."
    )
    owners: list[str] | None = None
    tags: dict[str, str] | None = None
    pool: str | None = Field(
        default=None, description="Dagster concurrency pool of the image steps."
    )
    code_version: str | None = None
    resource_key: str | None = Field(
        default=None,
        description=(
            "Key of the GPTImageResource the assets use. Default: gptimage, or gptimage__<name> "
            "when the resource block is given."
        ),
    )
    resource: ResourceSpec | None = Field(
        default=None, description="Provide this component's own GPTImageResource."
    )
    store_key: str | None = Field(
        default=None,
        description=(
            "Key of the ImageStore resource. Default: image_store, or image_store__<name> when "
            "the store block is given."
        ),
    )
    store: ImageStoreSpec | None = Field(
        default=None, description="Provide this component's own ImageStore."
    )
    edits: list[EditStep] | None = Field(default=None, description="Edit steps downstream.")

    @classmethod
    def get_spec(cls) -> dg.ComponentTypeSpec:
        return dg.ComponentTypeSpec(
            description=(
                "Prompt table -> partitioned, lineage-tracked images with OpenAI GPT image "
                "models, with edit steps downstream."
            ),
            tags=["openai", "image"],
            produces=["asset", "asset_check", "sensor", "resource"],
        )

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> Self:
        """Dagster's load, with a YAML-pointing message when a value is refused.

        ``dg check yaml`` normally catches these first, but it is skipped by ``dagster dev`` and
        ``dagster definitions validate`` (and it checks only one defs.yaml per component type), and
        then pydantic's own error names neither the file nor the fix.
        """
        try:
            return super().load(attributes, context)
        except (ValidationError, ResolutionException) as error:
            raw = (
                attributes.model_dump(mode="json", exclude_unset=True)
                if attributes is not None
                else {}
            )
            site = YamlSite(str(raw.get("name", "?")), context)
            refused = site.schema_violation(cls.model().model_json_schema(), raw)
            if refused is None:
                raise
            raise refused from error

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return _Builder(self, context).build()

    def request_params(self) -> dict[str, Any]:
        """The request defaults this component sets."""
        return {name: getattr(self, name) for name in GenerationDefaults.model_fields}


class _Builder(YamlSite):
    """Turns one declaration into definitions: resolves names and paths, calls the factories and
    points every refusal at its YAML field."""

    def __init__(self, component: GPTImageComponent, context: dg.ComponentLoadContext) -> None:
        super().__init__(component.name, context)
        self.c = component
        self.context = context

    def resources(self) -> tuple[dict[str, Any], str, str]:
        c = self.c
        ident = dg.AssetKey([*_prefix(c.key_prefix), c.name]).to_python_identifier()
        provided: dict[str, Any] = {}
        resource_key = c.resource_key or (f"gptimage__{ident}" if c.resource else "gptimage")
        store_key = c.store_key or (f"image_store__{ident}" if c.store else "image_store")
        if resource_key == store_key:
            raise self.fail(
                ["store_key"],
                f"resource_key and store_key are both {resource_key!r}",
                "give the image store and the API resource different keys",
            )
        if c.resource is not None:
            provided[resource_key] = self._gptimage_resource(c.resource)
        if c.store is not None:
            provided[store_key] = self._image_store(c.store)
        return provided, resource_key, store_key

    def _gptimage_resource(self, spec: ResourceSpec) -> GPTImageResource:
        provider: str = spec.provider
        env = spec.api_key_env
        if provider in ("openai", "auto") and env is None:
            env = "OPENAI_API_KEY"
        if provider in ("azure", "gateway") and env is None:
            raise self.fail(
                ["resource", "api_key_env"],
                f"provider {provider} needs an API key",
                "set api_key_env to the name of the environment variable holding the key",
            )
        if env is not None and not _ENV_NAME.fullmatch(env):
            raise self.fail(
                ["resource", "api_key_env"],
                "the value is not an environment variable name (not shown: it may be a key)",
                "give the variable's name (e.g. OPENAI_API_KEY), never the key itself",
                show_source=False,
            )
        if provider == "auto":
            provider = "openai" if os.environ.get(env or "") else "emulator"
            dg.get_dagster_logger().info(
                f"GPTImageComponent {self.c.name}: provider auto -> {provider}"
                + ("" if provider == "openai" else f" ({env} is not set: placeholder images)")
            )
        if provider == "azure" and (spec.base_url is None or spec.azure_deployment is None):
            raise self.fail(
                ["resource"],
                "provider azure needs base_url and azure_deployment",
                "set base_url: https://<resource>.openai.azure.com and azure_deployment",
            )
        options: dict[str, Any] = spec.model_dump(
            exclude={"provider", "api_key_env"}, exclude_defaults=True
        )
        options["provider"] = provider
        if provider != "emulator" and env is not None:
            options["api_key"] = dg.EnvVar(env)
        return GPTImageResource(**options)

    def _image_store(self, spec: ImageStoreSpec) -> ImageStore:
        base = spec.base_url
        if base is not None and "://" not in base and "::" not in base:
            expanded = os.path.expanduser(base)
            if not os.path.isabs(expanded):
                base = str(Path(self.context.project_root) / expanded)
        options: dict[str, Any] = dict(spec.storage_options or {})
        for option in options:
            if _SECRET_OPTION.search(option):
                raise self.fail(
                    ["store", "storage_options", option],
                    f"{option!r} looks like a credential, and storage_options are shown in the "
                    "Dagster UI",
                    f"move it to storage_options_env: {{{option}: NAME_OF_AN_ENV_VARIABLE}}",
                    show_source=False,
                )
        for option, env in (spec.storage_options_env or {}).items():
            if not _ENV_NAME.fullmatch(env):
                raise self.fail(
                    ["store", "storage_options_env", option],
                    "the value is not an environment variable name (not shown: it may be a secret)",
                    "give the name of the variable holding the secret, never the secret itself",
                    show_source=False,
                )
            options[option] = dg.EnvVar(env)
        try:
            store = ImageStore(base_url=base, storage_options=options)
            _ = store.resolved_base_url
        except ValueError as error:
            raise self.fail(
                ["store", "base_url"],
                str(error),
                "remove credentials from the URL; put their environment variable names in "
                "storage_options_env",
            ) from None
        return store

    # --- assets ------------------------------------------------------------------------------

    def build(self) -> dg.Definitions:
        c = self.c
        self._check_names()
        provided, resource_key, store_key = self.resources()
        table = self.table(["prompts"], c.prompts, c.prompts_format, c.key_column, c.prompt_column)
        common: dict[str, Any] = {
            "key_prefix": c.key_prefix,
            "group_name": c.group_name,
            "max_partitions_per_run": c.max_partitions_per_run,
            "resource_key": resource_key,
            "store_key": store_key,
            "tags": c.tags,
            "owners": c.owners,
            "pool": c.pool,
            "code_version": c.code_version,
        }
        generation = self._guard(
            [],
            c,
            lambda: image_generation_asset(
                name=c.name,
                prompts=table,
                description=c.description,
                model=c.image_model,
                partitioning=c.partitioning,
                max_cost_usd=c.max_cost_usd,
                mode=c.mode,
                prompts_key=[*_prefix(c.key_prefix), c.prompts_key] if c.prompts_key else None,
                automation_condition=_automation(c.automation),
                **c.request_params(),
                **common,
            ),
        )
        built: dict[str, dg.AssetsDefinition] = {c.name: generation}
        for index, step in enumerate(c.edits or []):
            built[step.name] = self._edit(index, step, built, common)
        assets: list[Any] = [prompt_rows_asset(generation), *built.values()]
        if c.gallery is not None:
            assets.append(self._gallery(c.gallery, list(built.values()), store_key))
        sensors: list[dg.SensorDefinition] = []
        if c.partitioning == "dynamic" or c.sensor is not None:
            spec = c.sensor or PromptTableSensorSpec()
            status = dg.DefaultSensorStatus.RUNNING if spec.default_status == "running" else None
            sensors.append(
                self._guard(
                    [],
                    c,
                    lambda: prompt_table_sensor(
                        generation,
                        name=spec.name,
                        minimum_interval_seconds=spec.minimum_interval_seconds,
                        default_status=status or dg.DefaultSensorStatus.STOPPED,
                    ),
                )
            )
        return dg.Definitions(assets=assets, sensors=sensors, resources=provided)

    def _gallery(
        self, spec: GallerySpec, images: Sequence[dg.AssetsDefinition], store_key: str
    ) -> dg.AssetsDefinition:
        c = self.c
        return image_gallery_asset(
            name=spec.name or f"{c.name}_gallery",
            assets=images,
            store_key=store_key,
            key_prefix=c.key_prefix,
            group_name=c.group_name,
            title=spec.title,
            thumbnail_size=spec.thumbnail_size,
            thumbnail_format=spec.thumbnail_format,
            automation_condition=(
                dg.AutomationCondition.eager() if spec.automation == "eager" else None
            ),
            owners=c.owners,
            tags=c.tags,
        )

    def _check_names(self) -> None:
        c = self.c
        names = [c.name, *(step.name for step in c.edits or [])]
        for index, name in enumerate(names):
            path: list[str | int] = ["name"] if index == 0 else ["edits", index - 1, "name"]
            if not _NAME_PATTERN.match(name):
                raise self.fail(
                    path,
                    f"{short_repr(name)} is not a valid asset name",
                    f"use letters, digits and underscores, e.g. {identifier(name) or 'images'!r}",
                )
            if name in names[:index]:
                raise self.fail(
                    path,
                    f"the name {name!r} is used twice in this component",
                    "give every edit step its own name",
                )

    def _guard(self, path: Sequence[str | int], step: BaseModel, build: Callable[[], _T]) -> _T:
        """Run a factory, blaming the YAML field behind the argument it refuses."""
        try:
            return build()
        except PromptTableError as error:
            raise self.fail(
                [*path, "prompts"],
                str(error),
                f"correct the rows listed above in {getattr(step, 'prompts', None) or ''}, or "
                "change the defaults in this file",
            ) from None
        except (DefinitionError, InvalidRequestError) as error:
            name = error.field or ""
            if isinstance(error, DefinitionError):
                problem, fix = str(error), error.fix
            else:
                problem, fix = error.message, _accepted_fix(name, error.accepted)
            if name in _YAML_FIXES:
                fix = _YAML_FIXES[name].format(folder=self.folder)
            raise self.fail(self._blame(path, step, name), problem, fix) from None

    def _blame(self, path: Sequence[str | int], step: BaseModel, name: str) -> list[str | int]:
        """The YAML path of factory argument ``name``: the step's field, or the component's when
        the step inherits it (an edit step without ``image_model``), or the step itself."""
        field = _YAML_FIELDS.get(name)
        if field is None:
            return list(path)
        inherited = path and getattr(step, field, None) is None
        if inherited and getattr(self.c, field, None) is not None:
            return [field]
        return [*path, field]

    def _sources(self, index: int, step: EditStep, built: Mapping[str, Any]) -> list[Any]:
        """The step's sources, by step name, among the steps before it."""
        sources = step.sources or [self.c.name]
        for position, source in enumerate(sources):
            if source not in built:
                later = [s.name for s in (self.c.edits or [])[index:]]
                reason = (
                    "is this step or a later one (a step can only edit earlier steps)"
                    if source in later
                    else "is not a step of this component"
                )
                close = difflib.get_close_matches(source, list(built), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise self.fail(
                    ["edits", index, "sources", position],
                    f"{source!r} {reason}",
                    f"{hint}use one of: {', '.join(built)}",
                )
        return [built[source] for source in sources]

    def _edit(
        self,
        index: int,
        step: EditStep,
        built: Mapping[str, dg.AssetsDefinition],
        common: Mapping[str, Any],
    ) -> dg.AssetsDefinition:
        path: list[str | int] = ["edits", index]
        sources = self._sources(index, step, built)
        if (step.prompt is None) == (step.prompts is None):
            raise self.fail(
                path,
                "an edit step needs exactly one of prompt (one for every partition) or prompts (a "
                "table keyed like the sources)",
                "give prompt: <text> or prompts: <table path>, not both or neither",
            )
        table = None
        if step.prompts is not None:
            table = self.table(
                [*path, "prompts"],
                step.prompts,
                step.prompts_format,
                step.key_column,
                step.prompt_column,
            )
        automation = _automation(step.automation)
        return self._guard(
            path,
            step,
            lambda: image_edit_asset(
                name=step.name,
                sources=sources,
                prompt=step.prompt,
                prompts=table,
                mask=self.location(step.mask) if step.mask is not None else None,
                mask_column=step.mask_column,
                description=step.description,
                model=step.image_model or self.c.image_model,
                automation_condition=automation,
                max_cost_usd=(
                    step.max_cost_usd if step.max_cost_usd is not None else self.c.max_cost_usd
                ),
                mode=step.mode or self.c.mode,
                **step.request_params(),
                **common,
            ),
        )


def _accepted_fix(name: str, accepted: Any) -> str:
    field = _YAML_FIELDS.get(name, name) or "the field"
    if isinstance(accepted, (list, tuple)):
        accepted = ", ".join(str(a) for a in accepted)
    return (
        f"set {field} to an accepted value: {accepted}" if accepted else f"change or remove {field}"
    )


def _automation(choice: str | None) -> dg.AutomationCondition | None:
    if choice == "eager":
        return dg.AutomationCondition.eager()
    if choice == "on_missing":
        return dg.AutomationCondition.on_missing()
    return None


def _prefix(key_prefix: str | Sequence[str] | None) -> list[str]:
    if key_prefix is None:
        return []
    return [key_prefix] if isinstance(key_prefix, str) else list(key_prefix)
