"""One real, cheap request to OpenAI (about $0.006), only when explicitly asked for."""

from __future__ import annotations

import os

import pytest

from dagster_gptimage.client import GPTImageClient

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        os.environ.get("GPTIMAGE_LIVE_TEST") != "1" or not os.environ.get("OPENAI_API_KEY"),
        reason="live test: set GPTIMAGE_LIVE_TEST=1 and OPENAI_API_KEY to call the real API "
        "(one low-quality 1024x1024 image, about $0.006)",
    ),
]


def test_live_low_quality_generation() -> None:
    key = os.environ["OPENAI_API_KEY"]
    with GPTImageClient(api_key=key, max_retries=1) as client:
        result = client.generate_sync(
            "a small red cube on a white table, studio light", size="1024x1024", quality="low"
        )
    [image] = result.images
    assert (image.width, image.height) == (1024, 1024)
    assert image.format == "png"
    assert result.usage.output_tokens > 0
    assert 0 < result.cost_usd < 0.1
    assert result.request_id
    assert key not in repr(result)
