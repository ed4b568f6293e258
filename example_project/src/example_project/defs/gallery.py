"""A gallery of every image of the example, to review them by eye: thumbnails with prompt, cost and
model, edits beside their sources, search and filters (docs/gallery.md). One HTML page in the
store, ``image_gallery/index.html``; open it in a browser."""

from dagster_gptimage import image_gallery_asset
from example_project.defs.dataset import IMAGE_ASSETS

image_gallery = image_gallery_asset(
    name="image_gallery",
    assets=IMAGE_ASSETS,
    group_name="datasets",
    title="example_project: every image",
)
