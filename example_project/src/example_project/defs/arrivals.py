"""A dynamic prompt table: append a row to data/arrivals.csv and the sensor adds its partition and
requests its run, without a code reload."""

from pathlib import Path

from dagster_gptimage import (
    PromptTable,
    image_generation_asset,
    prompt_rows_asset,
    prompt_table_sensor,
)

DATA = Path(__file__).parents[1] / "data"

new_arrivals = image_generation_asset(
    name="new_arrivals",
    prompts=PromptTable.from_path(DATA / "arrivals.csv"),
    partitioning="dynamic",
    group_name="products",
    size="1024x1024",
    quality="low",
    output_format="webp",
    max_cost_usd=1.0,
)

new_arrivals_prompts = prompt_rows_asset(new_arrivals)

new_arrivals_sensor = prompt_table_sensor(new_arrivals, minimum_interval_seconds=30)
