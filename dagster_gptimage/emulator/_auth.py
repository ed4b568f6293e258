"""Authentication as each profile's provider checks it, with its 401 and 404 answers."""

from __future__ import annotations

from collections.abc import Mapping

from ._config import EmulatorConfig
from ._wire import ApiError

__all__ = ["authenticate"]


def authenticate(
    config: EmulatorConfig, headers: Mapping[str, str], query: Mapping[str, str]
) -> None:
    """Raise the provider's :class:`ApiError` for a request it would not accept as authenticated.

    ``headers`` keys are lower case."""
    if config.profile == "azure":
        _authenticate_azure(config, headers, query)
        return
    if not config.require_auth:
        return
    token = _bearer(headers.get("authorization"))
    if not token:
        raise ApiError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    if config.api_key is not None and token != config.api_key:
        raise ApiError(
            401,
            f"Incorrect API key provided: {_mask(token)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )


def _authenticate_azure(
    config: EmulatorConfig, headers: Mapping[str, str], query: Mapping[str, str]
) -> None:
    if not query.get("api-version"):
        raise ApiError(404, "Resource not found", type=None, code="404")
    key = headers.get("api-key")
    bearer = _bearer(headers.get("authorization"))
    if not config.require_auth:
        return
    valid = (key or bearer) if config.api_key is None else config.api_key in (key, bearer)
    if not valid:
        raise ApiError(
            401,
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
            "to provide a valid key for an active subscription and use a correct regional "
            "API endpoint for your resource.",
            type=None,
            code="401",
        )


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _mask(token: str) -> str:
    if len(token) < 12:
        return "*" * len(token)
    return f"{token[:3]}{'*' * (len(token) - 7)}{token[-4:]}"
