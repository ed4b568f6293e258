"""ClientSettings is the single declaration of the client's settings."""

from typing import Any

import dagster as dg
import pytest
from _httpfakes import FAKE_KEY

from dagster_gptimage import ClientSettings, GPTImageClient, GPTImageResource
from dagster_gptimage.component import ResourceSpec
from dagster_gptimage.pricing import PriceTable


def _config_fields(resource: type[dg.ConfigurableResource]) -> dict[str, str | None]:
    fields = resource.to_config_schema().as_field().config_type.fields  # type: ignore[attr-defined]
    return {name: field.description for name, field in fields.items()}


def test_the_resource_config_schema_is_the_settings() -> None:
    expected = {name: f.description for name, f in ClientSettings.model_fields.items()}
    assert all(expected.values())
    assert _config_fields(GPTImageResource) == expected


def test_the_component_resource_block_is_the_settings() -> None:
    """The key is named by ``api_key_env``; the model is the component's ``image_model``."""
    expected = set(ClientSettings.model_fields) - {"api_key", "model"} | {"api_key_env"}
    assert set(ResourceSpec.model_fields) == expected
    for name in expected - {"api_key_env", "provider"}:
        spec_field = ResourceSpec.model_fields[name]
        setting = ClientSettings.model_fields[name]
        assert (spec_field.default, spec_field.description) == (
            setting.default,
            setting.description,
        )


def test_client_settings_object_and_keywords_are_equivalent() -> None:
    settings = ClientSettings(api_key=FAKE_KEY, max_concurrency=3, model="gpt-image-1.5")
    from_object = GPTImageClient(settings)
    from_keywords = GPTImageClient(api_key=FAKE_KEY, max_concurrency=3, model="gpt-image-1.5")
    assert from_object.settings == from_keywords.settings == settings
    overridden = GPTImageClient(settings, max_retries=1)
    assert (overridden.max_retries, overridden.max_concurrency) == (1, 3)
    assert settings.max_retries == 4


def test_the_resource_hands_its_settings_to_the_client() -> None:
    resource = GPTImageResource(provider="emulator", max_concurrency=2, prices={"gpt-image-2": {}})
    settings = resource.client_settings()
    assert type(settings) is ClientSettings
    assert settings.model_dump() == {n: getattr(resource, n) for n in ClientSettings.model_fields}
    assert resource.get_client().settings == settings


def test_unknown_setting_is_named() -> None:
    with pytest.raises(TypeError, match="'max_concurency'") as info:
        GPTImageClient(api_key=FAKE_KEY, max_concurency=3)
    assert "max_concurrency" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"images_per_minute": 0}, "images_per_minute"),
        ({"max_download_bytes": 0}, "max_download_bytes"),
        ({"gateway_response_format": "png"}, "gateway_response_format"),
        ({"provider": "bing"}, "provider"),
    ],
)
def test_bad_setting_is_named(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        GPTImageClient(api_key=FAKE_KEY, **kwargs)


def test_a_bad_key_value_is_not_echoed() -> None:
    secret = 12345678987654321
    with pytest.raises(ValueError, match="api_key") as info:
        GPTImageClient(api_key=secret)
    assert str(secret) not in str(info.value)


def test_settings_never_show_the_key() -> None:
    settings = ClientSettings(api_key=FAKE_KEY)
    for text in (repr(settings), str(settings), repr(GPTImageClient(settings))):
        assert FAKE_KEY not in text
    assert "api_key=***" in repr(settings)


def test_price_tables_are_accepted_as_settings() -> None:
    table = PriceTable({"gpt-image-2": {"image_output": 99.0}})
    client = GPTImageClient(api_key=FAKE_KEY, prices=table)
    assert client.prices.for_model("gpt-image-2").image_output == 99.0
    assert client.settings.prices == table.as_dict()
