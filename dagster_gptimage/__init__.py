"""dagster-gptimage: prompt tables to lineage-tracked, partitioned image datasets."""

from dagster_shared.libraries import DagsterLibraryRegistry

from dagster_gptimage.version import __version__

DagsterLibraryRegistry.register("dagster-gptimage", __version__, is_dagster_package=False)

__all__ = ["__version__"]
