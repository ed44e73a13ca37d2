"""The resumable state of a run: LoRA, optimizer, scheduler, step. Safetensors + JSON, no pickle.

Every random draw of a step is derived from (seed, step), so no RNG state needs saving:
a resumed run continues the loss curve of an uninterrupted one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from ..errors import CheckpointError
from ..fileio import atomic_write_bytes

STATE_FILE = "resume.lsstate"  # safetensors inside; an extension the WebUI's Lora list ignores


@dataclass
class ResumeState:
    step: int
    lora: dict
    optimizer: dict
    scheduler: dict
    config_toml: str


def save_state(folder: Path, state: ResumeState) -> Path:
    tensors = {f"lora/{k}": v.detach().cpu().contiguous() for k, v in state.lora.items()}
    opt_state, opt_tensors = _split_tensors(state.optimizer["state"], "optimizer")
    tensors.update(opt_tensors)
    meta = {
        "step": str(state.step),
        "optimizer_state": json.dumps(opt_state),
        "optimizer_groups": json.dumps(state.optimizer["param_groups"]),
        "scheduler": json.dumps({k: v for k, v in state.scheduler.items() if k != "lr_lambdas"}),
        "config": state.config_toml,
    }
    path = Path(folder) / STATE_FILE
    atomic_write_bytes(path, safetensors.torch.save(tensors, meta))
    return path


def load_state(folder: Path) -> ResumeState:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"No resumable state in {folder} ({STATE_FILE} is missing). Start a new run instead.")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        opt_state = _join_tensors(json.loads(meta["optimizer_state"]), tensors)
        return ResumeState(
            step=int(meta["step"]),
            lora={k[len("lora/"):]: v for k, v in tensors.items() if k.startswith("lora/")},
            optimizer={"state": {int(k): v for k, v in opt_state.items()},
                       "param_groups": json.loads(meta["optimizer_groups"])},
            scheduler=json.loads(meta["scheduler"]),
            config_toml=meta["config"],
        )
    except (KeyError, ValueError, OSError, safetensors.SafetensorError) as error:
        raise CheckpointError(f"{path} is damaged ({error}). Start a new run instead.") from error


def _split_tensors(tree, prefix: str):
    """Replace tensors in a nested dict by {'__tensor__': key}, collecting them apart."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node, path):
        if isinstance(node, torch.Tensor):
            tensors[path] = node.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(node, dict):
            return {str(k): walk(v, f"{path}/{k}") for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(node)]
        return node

    return walk(tree, prefix), tensors


def _join_tensors(tree, tensors: dict):
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        return {k: _join_tensors(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join_tensors(v, tensors) for v in tree]
    return tree
