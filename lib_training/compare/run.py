"""Run a grid: every cell not in the cache is generated once, saved, and never generated again.

A generator error stops the run where it is; the cells done so far stay cached, so running the
same spec again continues from there. Cancelling returns the partial result (`complete=False`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

from PIL import Image

from .cache import cached_image_path, lora_hashes, save_cell_image
from .grid import CellRequest, Generator, GridCell, GridSpec, baseline_requests, plan_cells


class Cancel(Protocol):
    """Anything with a `cancelled` flag, e.g. `lib_training.train.events.CancelToken`."""

    @property
    def cancelled(self) -> bool: ...


@dataclass(frozen=True)
class GridProgress:
    done: int  # requests finished so far, cached ones included
    total: int
    request: CellRequest
    from_cache: bool


ProgressSink = Callable[[GridProgress], None]


@dataclass
class GridResult:
    spec: GridSpec
    cells: list[GridCell]
    images: dict[str, Path]  # cache key -> PNG, for the cells and the drift baselines
    generated: int = 0
    from_cache: int = 0
    complete: bool = True
    baselines: list[CellRequest] = field(default_factory=list)

    def path(self, request: CellRequest) -> Path | None:
        return self.images.get(request.key)

    def image(self, request: CellRequest) -> Image.Image | None:
        path = self.path(request)
        if path is None:
            return None
        with Image.open(path) as img:
            return img.convert("RGB")


def run_grid(spec: GridSpec, generator: Generator, cache_dir: Path, on_progress: ProgressSink | None = None,
             cancel: Cancel | None = None) -> GridResult:
    """Generate (or take from `cache_dir`) every cell of `spec` and the baselines drift needs."""
    spec.validate()
    hashes = lora_hashes(cache_dir, [f.path for f in spec.files])
    cells = plan_cells(spec, {Path(p): h for p, h in hashes.items()})
    baselines = baseline_requests(spec, cells)
    requests = [c.request for c in cells] + baselines
    images, generated, cached, complete = generate_cached(requests, generator, cache_dir, on_progress, cancel)
    return GridResult(spec, cells, images, generated, cached, complete, baselines)


def generate_cached(requests: Sequence[CellRequest], generator: Generator, cache_dir: Path,
                    on_progress: ProgressSink | None = None, cancel: Cancel | None = None
                    ) -> tuple[dict[str, Path], int, int, bool]:
    """(key -> PNG, generated, from cache, complete) for `requests`; each distinct key is made once."""
    unique: dict[str, CellRequest] = {}
    for request in requests:
        unique.setdefault(request.key, request)
    images: dict[str, Path] = {}
    generated = cached = 0
    for done, (key, request) in enumerate(unique.items(), start=1):
        path = cached_image_path(cache_dir, request)
        from_cache = path is not None
        if path is None:
            if cancel is not None and cancel.cancelled:
                return images, generated, cached, False
            path = save_cell_image(cache_dir, request, generator.generate(request))
            generated += 1
        else:
            cached += 1
        images[key] = path
        if on_progress is not None:
            on_progress(GridProgress(done, len(unique), request, from_cache))
    return images, generated, cached, True
