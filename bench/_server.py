"""``python -m bench._server``: the emulator server with photo-like, pre-rendered PNGs.

Same CLI and HTTP behaviour as ``python -m dagster_gptimage.emulator`` (validation, latency,
faults, stats); only the picture differs: PNGs are a pre-rendered photo-like image of the requested
size with the prompt in a text chunk, instead of a freshly drawn gradient. Rendering a real picture
costs the provider, not us; the emulator drawing 32 images a second would instead take most of this
machine's two cores away from the run being measured, and its gradients are ten times smaller
than real images.
"""

from __future__ import annotations

import functools
import sys

from bench._images import photo_bytes, unique_png
from dagster_gptimage.emulator import RenderSpec, _bodies, render
from dagster_gptimage.emulator import __main__ as emulator_main


@functools.lru_cache(maxsize=8)
def _base(width: int, height: int) -> bytes:
    return photo_bytes(width, height, "png")


def _photo_render(spec: RenderSpec) -> bytes:
    if spec.output_format != "png" or spec.inputs or spec.transparent:
        return render(spec)
    return unique_png(_base(spec.width, spec.height), f"{spec.index}:{spec.prompt}")


def main() -> None:
    _bodies.render = _photo_render  # type: ignore[attr-defined]
    emulator_main.main(sys.argv[1:])


if __name__ == "__main__":
    main()
