"""GPTImageResource: the Dagster face of :class:`~dagster_gptimage.client.GPTImageClient`.

No ``from __future__ import annotations`` here: Dagster builds the config schema from these
annotations at class creation.
"""

import threading
from collections.abc import Generator
from typing import Any, Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.models import Provider

__all__ = ["GPTImageResource"]


class GPTImageResource(dg.ConfigurableResource):
    """Connection settings for GPT image models, shared by every asset of a run.

    Pass the key as ``api_key=dg.EnvVar("OPENAI_API_KEY")`` so it never appears in code or in the
    Dagster UI. ``provider="emulator"`` needs no key and serves deterministic images in-process.
    The client is created on first use and shared by the assets of a step, so
    ``max_concurrency`` and ``images_per_minute`` bound the step as a whole.
    """

    api_key: str | None = Field(
        default=None,
        description='API key; use dg.EnvVar("OPENAI_API_KEY"). Not needed for the emulator.',
    )
    provider: Provider = Field(
        default="openai", description="openai, azure, gateway (OpenAI-compatible) or emulator."
    )
    base_url: str | None = Field(
        default=None,
        description="API base URL. Required for azure (https://{resource}.openai.azure.com).",
    )
    model: str = Field(default="gpt-image-2", description="Default model of requests.")
    timeout_s: float = Field(
        default=600.0,
        description="Read timeout per attempt; high-quality large images can take minutes.",
    )
    connect_timeout_s: float = Field(default=10.0, description="TCP/TLS connect timeout.")
    max_retries: int = Field(default=4, description="Retries after the first attempt.")
    retry_on_timeout: bool = Field(
        default=False,
        description="Retry read timeouts. Off by default: a timed-out image may have been billed.",
    )
    max_retry_wait_s: float = Field(
        default=120.0,
        description="Give up instead of waiting longer than this when told to (retry-after).",
    )
    max_concurrency: int = Field(default=8, description="Requests in flight at once.")
    images_per_minute: float | None = Field(
        default=None, description="Optional rate limit, in images per minute."
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
        default=64 * 2**20, description="Size cap of an image downloaded from a gateway URL."
    )
    allow_insecure_downloads: bool = Field(
        default=False, description="Allow plain-http image URLs from non-loopback hosts."
    )
    emulator_name: str = Field(
        default="default",
        description="Which in-process emulator serves provider=emulator (without base_url; "
        "with one, the client talks HTTP to an emulator server).",
    )
    emulator_options: dict[str, Any] | None = Field(
        default=None, description="EmulatorConfig fields (latency, fault rates…) for the emulator."
    )

    _client: GPTImageClient | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __repr_args__(self) -> Generator[tuple[str | None, Any], None, None]:
        for name, value in super().__repr_args__():
            if name == "api_key" and value is not None:
                value = _masked(value)
            yield name, value

    def get_client(self) -> GPTImageClient:
        """The configured client (created once per resource instance).

        Raises before any request when the configuration cannot work: a missing ``api_key`` (for
        every provider but the emulator), Azure without ``base_url`` or ``azure_deployment``.
        """
        with self._lock:
            if self._client is None:
                self._client = self._build_client()
            return self._client

    def _build_client(self) -> GPTImageClient:
        emulator = None
        if self.provider == "emulator" and self.base_url is None:
            from dagster_gptimage.emulator import get_emulator

            emulator = get_emulator(self.emulator_name, **(self.emulator_options or {}))
        return GPTImageClient(
            api_key=self.api_key or None,
            provider=self.provider,
            base_url=self.base_url,
            model=self.model,
            timeout_s=self.timeout_s,
            connect_timeout_s=self.connect_timeout_s,
            max_retries=self.max_retries,
            retry_on_timeout=self.retry_on_timeout,
            max_retry_wait_s=self.max_retry_wait_s,
            max_concurrency=self.max_concurrency,
            images_per_minute=self.images_per_minute,
            prices=self.prices,
            azure_deployment=self.azure_deployment,
            azure_api_version=self.azure_api_version,
            gateway_response_format=self.gateway_response_format,
            max_download_bytes=self.max_download_bytes,
            allow_insecure_downloads=self.allow_insecure_downloads,
            emulator=emulator,
        )

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


class _Shown(str):
    """Text that reprs as itself, so ``repr(resource)`` reads ``api_key=***``."""

    def __repr__(self) -> str:
        return str(self)


def _masked(value: Any) -> _Shown:
    """An EnvVar shows its variable name (harmless, and useful); a literal key shows nothing."""
    if isinstance(value, dg.EnvVar):
        return _Shown(f"EnvVar({value.env_var_name!r})")
    return _Shown("***")
