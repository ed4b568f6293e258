from pathlib import Path

import dagster as dg

from example_project.resources import resources


@dg.definitions
def defs() -> dg.Definitions:
    """Everything under defs/ (Python modules and the YAML component), plus the shared resources."""
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(resources=resources()),
    )
