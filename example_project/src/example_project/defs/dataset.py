"""Every image of the example in one manifest (Parquet + JSONL, with cost rollups), exported as a
Hugging Face imagefolder dataset."""

from dagster_gptimage.datasets import image_dataset_export_asset, image_manifest_asset
from example_project.resources import store_url

IMAGE_ASSETS = [
    "product_shots",
    "product_shots_lifestyle",
    "new_arrivals",
    # Declared in defs/posters/defs.yaml (the YAML pipeline):
    "posters",
    "posters_vintage",
    "posters_framed",
]

image_manifest = image_manifest_asset(
    name="image_manifest",
    sources=IMAGE_ASSETS,
    group_name="datasets",
)

image_dataset = image_dataset_export_asset(
    name="image_dataset",
    sources=[image_manifest],
    output_url=f"{store_url()}/image_dataset",
    group_name="datasets",
)
