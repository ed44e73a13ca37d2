"""Compare: grids of LoRA files x weights x prompts x seeds, metrics, a recommendation, loss curves.

Pure engine code (no gradio, no WebUI): images come from a `Generator` the caller supplies
(A1111's processing in the WebUI, diffusers in the CLI), embeddings from an `Embedder` (CLIP).

    spec = GridSpec(files=run_files(lora_dir, "my_lora"), weights=(0.6, 0.8, 1.0),
                    prompts=("photo of sks woman",), seeds=(1, 2, 3), base_model_hash=model_sha256,
                    class_prompt="photo of a woman", trigger_words=("sks",))
    result = run_grid(spec, generator, cache_dir)          # cached: re-opening does not regenerate
    save_grid(result, "grid.png")
    report = compute_metrics(result, load_embedder("openai/clip-vit-base-patch32"), training_paths)
    print(recommend(report).reason)
"""

from .curves import LossSeries, draw_loss_chart, ema, list_runs, read_loss_log, read_runs, runs_dir
from .embedders import OpenClipEmbedder, TransformersClipEmbedder, load_embedder
from .grid import (
    AXES,
    CellRequest,
    Generator,
    GridCell,
    GridLayout,
    GridSpec,
    LoraFile,
    any_files,
    format_weight,
    plan_cells,
    run_files,
)
from .layout import GridGeometry, GridPicture, cell_position, draw_grid, grid_infotext, save_grid
from .metrics import (
    METRIC_EXPLANATIONS,
    CellMetrics,
    Embedder,
    GroupMetrics,
    MetricsReport,
    alignment_text,
    compute_metrics,
    metrics_from_embeddings,
)
from .pairs import DatasetComparison, DatasetPair, PairSpec, dataset_vs_generated
from .recommend import Bounds, Recommendation, recommend
from .run import GridProgress, GridResult, generate_cached, run_grid

__all__ = [
    "AXES", "Bounds", "CellMetrics", "CellRequest", "DatasetComparison", "DatasetPair", "Embedder", "Generator",
    "GridCell", "GridGeometry", "GridLayout", "GridPicture", "GridProgress", "GridResult", "GridSpec",
    "GroupMetrics", "LoraFile", "LossSeries", "METRIC_EXPLANATIONS", "MetricsReport", "OpenClipEmbedder",
    "PairSpec", "Recommendation", "TransformersClipEmbedder", "alignment_text", "any_files", "cell_position",
    "compute_metrics", "dataset_vs_generated", "draw_grid", "draw_loss_chart", "ema", "format_weight",
    "generate_cached", "grid_infotext", "list_runs", "load_embedder", "metrics_from_embeddings", "plan_cells",
    "read_loss_log", "read_runs", "recommend", "run_files", "run_grid", "runs_dir", "save_grid",
]
