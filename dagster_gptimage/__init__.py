"""dagster-gptimage: prompt tables to lineage-tracked, partitioned image datasets.

The public API is what this module exports; every other module is an implementation detail.
"""

from dagster_shared.libraries import DagsterLibraryRegistry

from dagster_gptimage._ratelimit import RateLimitStats
from dagster_gptimage.assets import (
    IMAGE_CHECK_NAME,
    ImageAssetConfig,
    image_edit_asset,
    image_generation_asset,
)
from dagster_gptimage.client import GPTImageClient
from dagster_gptimage.component import GPTImageComponent
from dagster_gptimage.datasets import (
    MANIFEST_COLUMNS,
    export_imagefolder,
    image_dataset_export_asset,
    image_manifest_asset,
)
from dagster_gptimage.errors import (
    AuthenticationError,
    DefinitionError,
    GPTImageError,
    GPTImageTimeoutError,
    InvalidImageError,
    InvalidRequestError,
    ModerationBlockedError,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
)
from dagster_gptimage.fingerprint import request_fingerprint
from dagster_gptimage.gallery import GalleryResult, build_gallery, image_gallery_asset
from dagster_gptimage.models import (
    EditRequest,
    GeneratedImage,
    GenerateRequest,
    ImageParams,
    ImageRequest,
    ImageResult,
    InputImage,
    Provider,
    RequestDefaults,
    Usage,
)
from dagster_gptimage.preflight import CostEstimate, estimate_asset_cost
from dagster_gptimage.pricing import (
    DEFAULT_PRICES,
    ModelPrices,
    PriceTable,
    cost_of_usage,
    estimate_cost,
)
from dagster_gptimage.prompt_rows import prompt_rows_asset, row_data_version
from dagster_gptimage.prompts import PromptRow, PromptTable, PromptTableError
from dagster_gptimage.resource import GPTImageResource
from dagster_gptimage.sensors import prompt_table_sensor
from dagster_gptimage.settings import ClientSettings
from dagster_gptimage.storage import ImageRecord, ImageStore, SourceImage
from dagster_gptimage.validation import validate_request
from dagster_gptimage.version import __version__

DagsterLibraryRegistry.register("dagster-gptimage", __version__, is_dagster_package=False)

__all__ = [
    "DEFAULT_PRICES",
    "IMAGE_CHECK_NAME",
    "MANIFEST_COLUMNS",
    "AuthenticationError",
    "ClientSettings",
    "CostEstimate",
    "DefinitionError",
    "EditRequest",
    "GPTImageClient",
    "GPTImageComponent",
    "GPTImageError",
    "GPTImageResource",
    "GPTImageTimeoutError",
    "GalleryResult",
    "GenerateRequest",
    "GeneratedImage",
    "ImageAssetConfig",
    "ImageParams",
    "ImageRecord",
    "ImageRequest",
    "ImageResult",
    "ImageStore",
    "InputImage",
    "InvalidImageError",
    "InvalidRequestError",
    "ModelPrices",
    "ModerationBlockedError",
    "PriceTable",
    "PromptRow",
    "PromptTable",
    "PromptTableError",
    "Provider",
    "ProviderError",
    "QuotaExceededError",
    "RateLimitError",
    "RateLimitStats",
    "RequestDefaults",
    "SourceImage",
    "Usage",
    "__version__",
    "build_gallery",
    "cost_of_usage",
    "estimate_asset_cost",
    "estimate_cost",
    "export_imagefolder",
    "image_dataset_export_asset",
    "image_edit_asset",
    "image_gallery_asset",
    "image_generation_asset",
    "image_manifest_asset",
    "prompt_rows_asset",
    "prompt_table_sensor",
    "request_fingerprint",
    "row_data_version",
    "validate_request",
]
