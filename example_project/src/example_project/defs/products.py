"""The Python pipeline: a dozen product shots, and a lifestyle edit of each one."""

from pathlib import Path

import dagster as dg

from dagster_gptimage import (
    PromptTable,
    image_edit_asset,
    image_generation_asset,
    prompt_rows_asset,
)

DATA = Path(__file__).parents[1] / "data"

product_shots = image_generation_asset(
    name="product_shots",
    prompts=PromptTable.from_path(DATA / "products.csv"),
    group_name="products",
    size="1536x1024",
    quality="low",
    output_format="webp",
    output_compression=85,
    max_cost_usd=2.0,
)

# The table in the asset graph, one data version per row: a changed row marks its image stale.
product_shots_prompts = prompt_rows_asset(product_shots)

product_shots_lifestyle = image_edit_asset(
    name="product_shots_lifestyle",
    sources=[product_shots],
    prompt=(
        "Place this exact product on a sunlit oak kitchen counter with a softly blurred background; "
        "keep its shape, colors and details unchanged"
    ),
    group_name="products",
    quality="low",
    output_format="webp",
    automation_condition=dg.AutomationCondition.eager(),
    max_cost_usd=2.0,
)
