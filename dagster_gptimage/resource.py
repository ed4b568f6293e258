"""GPTImageResource: the Dagster face of :class:`~dagster_gptimage.client.GPTImageClient`.

Its fields are :class:`~dagster_gptimage.settings.ClientSettings`, inherited rather than repeated,
so the resource's config schema and the client's settings cannot drift apart.

No ``from __future__ import annotations`` here: Dagster builds the config schema from these
annotations at class creation.
"""

import threading

import dagster as dg
from pydantic import PrivateAttr

from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.settings import ClientSettings

__all__ = ["GPTImageResource"]


class GPTImageResource(ClientSettings, dg.ConfigurableResource):
    """Connection settings for GPT image models, shared by every asset of a run.

    Pass the key as ``api_key=dg.EnvVar("OPENAI_API_KEY")`` so it never appears in code or in the
    Dagster UI. ``provider="emulator"`` needs no key and serves deterministic images in-process.
    The client is created on first use and shared by the assets of a step, so
    ``max_concurrency`` and ``images_per_minute`` bound the step as a whole.
    """

    _client: GPTImageClient | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def get_client(self) -> GPTImageClient:
        """The configured client (created once per resource instance).

        Raises before any request when the configuration cannot work: a missing ``api_key`` (for
        every provider but the emulator), Azure without ``base_url`` or ``azure_deployment``.
        """
        with self._lock:
            if self._client is None:
                self._client = GPTImageClient(self.client_settings())
            return self._client

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
