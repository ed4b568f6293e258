"""The Python pipeline: a dozen product shots, and a lifestyle edit of each one."""

from pathlib import Path

import dagster as dg

from dagster_gptimage import PromptTable, image_edit_asset, image_generation_asset

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
