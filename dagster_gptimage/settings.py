"""ClientSettings: every setting of a GPT image client, declared once.

:class:`~dagster_gptimage.client.GPTImageClient` takes it, :class:`GPTImageResource` inherits its
fields (its Dagster config schema), and the YAML component's ``resource:`` block derives its fields
from it (the key as ``api_key_env``), so a new setting is added here and nowhere else.

No ``from __future__ import annotations`` here: Dagster builds config schemas from these
annotations at class creation.
"""

from collections.abc import Generator, Mapping
from typing import Any, Literal

import dagster as dg
from pydantic import BaseModel, Field, field_validator

from dagster_gptimage.models import Provider
from dagster_gptimage.pricing import ModelPrices

__all__ = ["ClientSettings"]


class ClientOptions(BaseModel):
    """Every client setting but the API key and the default model: the part of the settings the
    YAML component's ``resource:`` block holds as is (it names the key's environment variable
    instead, and sets the model of each asset as ``image_model``)."""

    provider: Provider = Field(
        default="openai", description="openai, azure, gateway (OpenAI-compatible) or emulator."
    )
    base_url: str | None = Field(
        default=None,
        description="API base URL. Required for azure (https://{resource}.openai.azure.com).",
    )
    timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="Read timeout per attempt; high-quality large images can take minutes.",
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, description="TCP/TLS connect timeout.")
    max_retries: int = Field(default=4, ge=0, description="Retries after the first attempt.")
    retry_on_timeout: bool = Field(
        default=False,
        description="Retry read timeouts. Off by default: a timed-out image may have been billed.",
    )
    max_retry_wait_s: float = Field(
        default=120.0,
        description="Give up instead of waiting longer than this when told to (retry-after).",
    )
    max_rate_limit_wait_s: float = Field(
        default=1800.0,
        ge=0,
        description="Most time one request waits, in all, for the provider's rate limit (pacing "
        "and 429s, which do not use max_retries) before failing with RateLimitError.",
    )
    max_concurrency: int = Field(
        default=8,
        ge=1,
        description=(
            "HTTP requests in flight at once. A request's slot is free as soon as its answer has "
            "arrived: the answer is decoded, verified and stored while the next request is sent."
        ),
    )
    images_per_minute: float | None = Field(
        default=None,
        gt=0,
        description="Optional cap, in images per minute, on top of the limit the client learns "
        "from the provider's answers.",
    )
    prices: dict[str, dict[str, float]] | None = Field(
        default=None,
        description="Price overrides in USD per 1M tokens, per model, e.g. "
        '{"gpt-image-2": {"image_output": 30.0}}.',
    )
    azure_deployment: str | None = Field(
        default=None, description="Azure deployment name (provider=azure)."
    )
    azure_api_version: str = Field(
        default="2025-04-01-preview", description="Azure api-version (provider=azure)."
    )
    gateway_response_format: Literal["b64_json", "url"] = Field(
        default="b64_json", description="How a gateway returns images (provider=gateway)."
    )
    max_download_bytes: int = Field(
        default=64 * 2**20, ge=1, description="Size cap of an image downloaded from a gateway URL."
    )
    allow_insecure_downloads: bool = Field(
        default=False, description="Allow plain-http image URLs from non-loopback hosts."
    )
    batch_poll_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="How often a batch-mode run asks the Batch API how its batches are doing.",
    )
    batch_cancel_on_terminate: bool = Field(
        default=False,
        description="Cancel a run's pending batches when the run is terminated. Off by default: "
        "the batch keeps running and a rerun collects its images (lines done are paid anyway).",
    )
    emulator_name: str = Field(
        default="default",
        description="Which in-process emulator serves provider=emulator (without base_url; "
        "with one, the client talks HTTP to an emulator server).",
    )
    emulator_options: dict[str, Any] | None = Field(
        default=None, description="EmulatorConfig fields (latency, fault rates…) for the emulator."
    )

    @field_validator("prices", mode="before")
    @classmethod
    def _plain_prices(cls, value: Any) -> Any:
        """A PriceTable, or ModelPrices values, become the plain dicts a config schema can hold."""
        if not isinstance(value, Mapping):
            return value
        return {
            model: prices.model_dump() if isinstance(prices, ModelPrices) else prices
            for model, prices in value.items()
        }


class _KeyAndModel(BaseModel):
    api_key: str | None = Field(
        default=None,
        description='API key; use dg.EnvVar("OPENAI_API_KEY"). Not needed for the emulator.',
    )
    model: str = Field(default="gpt-image-2", description="Default model of requests.")


class ClientSettings(ClientOptions, _KeyAndModel, dg.Config):
    """Settings of a :class:`~dagster_gptimage.client.GPTImageClient`, immutable and validated.

    ``GPTImageClient(ClientSettings(...))`` and ``GPTImageClient(**fields)`` are equivalent;
    :class:`~dagster_gptimage.resource.GPTImageResource` has exactly these fields. The key never
    appears in ``repr`` or ``str``.
    """

    def __repr_args__(self) -> Generator[tuple[str | None, Any], None, None]:
        for name, value in super().__repr_args__():
            if name == "api_key" and value is not None:
                value = _masked(value)
            yield name, value

    def client_settings(self) -> "ClientSettings":
        """These settings as a plain ClientSettings (from a subclass such as the resource).

        Outside a Dagster run an ``EnvVar`` key is still unresolved; it is read from the
        environment here, so a resource also works in scripts and notebooks.
        """
        if type(self) is ClientSettings:
            return self
        values = {name: getattr(self, name) for name in ClientSettings.model_fields}
        if isinstance(values["api_key"], dg.EnvVar):
            values["api_key"] = values["api_key"].get_value()
        return ClientSettings(**values)


class _Shown(str):
    """Text that reprs as itself, so ``repr(settings)`` reads ``api_key=***``."""

    def __repr__(self) -> str:
        return str(self)


def _masked(value: Any) -> _Shown:
    """An EnvVar shows its variable name (harmless, and useful); a literal key shows nothing."""
    if isinstance(value, dg.EnvVar):
        return _Shown(f"EnvVar({value.env_var_name!r})")
    return _Shown("***")
