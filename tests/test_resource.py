"""GPTImageResource: configuration, secrets, Dagster execution."""

import functools
import logging
from typing import Any

import dagster as dg
import pytest
from _httpfakes import FAKE_KEY, Scripted, fail, ok
from dagster._serdes import serialize_value

from dagster_gptimage import resource as resource_module
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.errors import AuthenticationError, DefinitionError
from dagster_gptimage.resource import GPTImageResource

ENV = "GPTIMAGE_TEST_FAKE_KEY"
pytestmark = pytest.mark.usefixtures("no_backoff_sleep")


@pytest.fixture(autouse=True)
def fake_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resources take keys only through dg.EnvVar (a literal one is refused)."""
    monkeypatch.setenv(ENV, FAKE_KEY)


def test_a_literal_key_is_refused_without_being_shown() -> None:
    with pytest.raises(DefinitionError, match=r"dg\.EnvVar") as refused:
        GPTImageResource(api_key=FAKE_KEY)
    assert refused.value.field == "api_key"
    assert FAKE_KEY not in str(refused.value)
    assert FAKE_KEY not in repr(refused.value)


def test_an_env_var_key_also_works_outside_a_run() -> None:
    client = GPTImageResource(api_key=dg.EnvVar(ENV)).get_client()
    assert client.settings.api_key == FAKE_KEY


def test_repr_and_str_hide_the_key() -> None:
    # What Dagster builds when a run starts: the EnvVar replaced by the key itself.
    resource = GPTImageResource(api_key=dg.EnvVar(ENV))._with_updated_values({"api_key": FAKE_KEY})
    assert resource.api_key == FAKE_KEY
    for text in (repr(resource), str(resource), f"{resource}", repr([resource])):
        assert FAKE_KEY not in text
        assert "api_key=***" in text
    from_env = GPTImageResource(api_key=dg.EnvVar(ENV))
    assert "api_key=EnvVar('GPTIMAGE_TEST_FAKE_KEY')" in repr(from_env)
    assert "api_key=None" in repr(GPTImageResource(provider="emulator"))


def test_get_client_is_configured_and_cached() -> None:
    resource = GPTImageResource(
        api_key=dg.EnvVar(ENV),
        provider="gateway",
        base_url="https://gw.example.com/openai/v1",
        model="gpt-image-1.5",
        max_concurrency=3,
        max_retries=2,
        retry_on_timeout=True,
        images_per_minute=12,
        prices={"gpt-image-1.5": {"image_output": 99.0}},
        gateway_response_format="url",
        timeout_s=123,
    )
    client = resource.get_client()
    assert client is resource.get_client()
    assert (client.provider, client.model, client.base_url) == (
        "gateway",
        "gpt-image-1.5",
        "https://gw.example.com/openai/v1",
    )
    assert (client.max_concurrency, client.max_retries, client.retry_on_timeout) == (3, 2, True)
    assert client.images_per_minute == 12
    assert client.timeout_s == 123
    assert client.prices.for_model("gpt-image-1.5").image_output == 99.0
    assert client.prices.for_model("gpt-image-2").image_output == 30.0
    assert FAKE_KEY not in repr(client)


@pytest.mark.parametrize("provider", ["openai", "gateway", "azure"])
def test_missing_key_is_a_clear_error_at_get_client(provider: Any) -> None:
    resource = GPTImageResource(
        provider=provider, base_url="https://r.openai.azure.com", azure_deployment="d"
    )
    with pytest.raises(AuthenticationError) as info:
        resource.get_client()
    message = str(info.value)
    assert "api_key" in message
    assert "dg.EnvVar(" in message
    assert info.value.attempts == 0


def test_azure_needs_a_deployment() -> None:
    resource = GPTImageResource(
        provider="azure", api_key=dg.EnvVar(ENV), base_url="https://r.openai.azure.com"
    )
    with pytest.raises(ValueError, match="azure_deployment"):
        resource.get_client()


def test_teardown_closes_and_forgets_the_client() -> None:
    resource = GPTImageResource(api_key=dg.EnvVar(ENV))
    client = resource.get_client()
    resource.teardown_after_execution(dg.build_init_resource_context())
    assert resource.get_client() is not client


def _patch_transport(monkeypatch: pytest.MonkeyPatch, transport: Scripted) -> None:
    monkeypatch.setattr(
        resource_module, "GPTImageClient", functools.partial(GPTImageClient, transport=transport)
    )


def test_resource_in_a_dagster_asset(monkeypatch: pytest.MonkeyPatch) -> None:
    transport = Scripted(fail(503), ok())
    _patch_transport(monkeypatch, transport)
    monkeypatch.setenv(ENV, FAKE_KEY)

    @dg.asset
    async def async_picture(gptimage: GPTImageResource) -> int:
        result = await gptimage.get_client().generate("a kite")
        return result.attempts

    @dg.asset(deps=[async_picture])
    def picture(gptimage: GPTImageResource) -> dict[str, Any]:
        result = gptimage.get_client().generate_sync("a kite", quality="low")
        return {"attempts": result.attempts, "width": result.images[0].width}

    outcome = dg.materialize(
        [picture, async_picture],
        resources={"gptimage": GPTImageResource(api_key=dg.EnvVar(ENV), max_retries=3)},
    )
    assert outcome.success
    assert outcome.output_for_node("async_picture") == 2
    assert outcome.output_for_node("picture") == {"attempts": 1, "width": 64}
    assert all(r.headers["authorization"] == f"Bearer {FAKE_KEY}" for r in transport.requests)


def test_failures_in_dagster_never_show_the_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = f"Incorrect API key provided: {FAKE_KEY}."
    _patch_transport(monkeypatch, Scripted(fail(401, "invalid_api_key", message=echo)))
    monkeypatch.setenv(ENV, FAKE_KEY)

    @dg.asset
    def picture(context: dg.AssetExecutionContext, gptimage: GPTImageResource) -> None:
        context.log.info(f"using {gptimage!r} / {gptimage.get_client()!r}")
        gptimage.get_client().generate_sync("a kite")

    instance = dg.DagsterInstance.ephemeral()
    outcome = dg.materialize(
        [picture],
        resources={"gptimage": GPTImageResource(api_key=dg.EnvVar(ENV))},
        instance=instance,
        raise_on_error=False,
    )
    assert not outcome.success
    records = instance.all_logs(outcome.run_id)
    dumped = [serialize_value(record) for record in records]
    assert any("AuthenticationError" in text for text in dumped)
    assert any("api_key=***" in text for text in dumped)
    assert all(FAKE_KEY not in text for text in dumped)
    assert all(FAKE_KEY not in r.getMessage() for r in caplog.records)


def test_missing_key_fails_the_asset_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    transport = Scripted(ok())
    _patch_transport(monkeypatch, transport)

    @dg.asset
    def picture(gptimage: GPTImageResource) -> None:
        gptimage.get_client().generate_sync("a kite")

    outcome = dg.materialize(
        [picture], resources={"gptimage": GPTImageResource()}, raise_on_error=False
    )
    assert not outcome.success
    [failure] = [e for e in outcome.all_events if e.is_step_failure]
    info = failure.step_failure_data.error
    assert info is not None
    text = info.to_string()
    assert "api_key" in text
    assert 'dg.EnvVar("OPENAI_API_KEY")' in text
    assert transport.requests == []
