"""GPTImageResource: the Dagster face of :class:`~dagster_gptimage.client.GPTImageClient`.

Its fields are :class:`~dagster_gptimage.settings.ClientSettings`, inherited rather than repeated,
so the resource's config schema and the client's settings cannot drift apart.

No ``from __future__ import annotations`` here: Dagster builds the config schema from these
annotations at class creation.
"""

import threading
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from dagster_gptimage._dagster import ResolvedConfigMarker, resolving_config
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.errors import DefinitionError
from dagster_gptimage.settings import ClientSettings

__all__ = ["GPTImageResource"]


class GPTImageResource(ResolvedConfigMarker, ClientSettings, dg.ConfigurableResource):
    """Connection settings for GPT image models, shared by every asset of a run.

    Pass the key as ``api_key=dg.EnvVar("OPENAI_API_KEY")``: a literal key is refused, because
    Dagster stores a resource's literal values in the job snapshot of every run (its run
    storage), where anyone with access to that database could read it. ``provider="emulator"``
    needs no key and serves deterministic images in-process.
    The client is created on first use and shared by the assets of a step, so
    ``max_concurrency`` and ``images_per_minute`` bound the step as a whole.
    """

    def __init__(self, **data: Any) -> None:
        # Checked before pydantic sees the value: its errors would echo the key.
        _refuse_literal_key(data.get("api_key"))
        super().__init__(**data)

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


def _refuse_literal_key(key: object) -> None:
    if isinstance(key, str) and not isinstance(key, dg.EnvVar) and not resolving_config():
        raise DefinitionError(
            "GPTImageResource: api_key was given as a literal string (not shown); Dagster would "
            "store it in the job snapshot of every run (its run storage). Pass "
            'api_key=dg.EnvVar("OPENAI_API_KEY") instead',
            field="api_key",
            fix='pass api_key=dg.EnvVar("OPENAI_API_KEY"), the name of an environment variable '
            "holding the key: it is read when a run starts and stored nowhere",
        )
