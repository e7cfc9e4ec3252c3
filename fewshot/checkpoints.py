"""Checkpoints: safetensors weights plus JSON metadata to rebuild and describe the model. Never pickle.

A checkpoint file's safetensors header carries two metadata strings: "format" (FORMAT) and "fewshot", a
JSON object with the backbone and its sizes, the task shape, the algorithm and its inner loop, the data
split, the iterations trained, measured accuracy, and the library version. Loading checks the weights
against the model that metadata describes. The optimizer state needed to resume a run lives beside it, in
a second safetensors file. Every write goes to a temporary file first, then renames it over the old one.
"""

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import __version__
from .config import Config
from .models import build_model

FORMAT = "fewshot-checkpoint-v1"
MODEL_KEYS = ("backbone", "channels", "blocks", "ways")
REQUIRED_KEYS = MODEL_KEYS + ("shots", "algorithm", "inner_lr", "inner_steps", "split", "iterations",
                              "library_version")


class CheckpointError(ValueError):
    """A file that is not a usable fewshot checkpoint; the message says why."""


def checkpoint_metadata(config: Config, iterations: int, accuracy: dict | None = None) -> dict:
    return {"backbone": config.backbone, "channels": config.channels, "blocks": config.blocks,
            "ways": config.ways, "shots": config.shots, "queries": config.queries,
            "algorithm": config.algorithm, "inner_lr": config.inner_lr, "inner_steps": config.inner_steps,
            "test_inner_steps": config.test_inner_steps, "split": config.split, "seed": config.seed,
            "iterations": iterations, "accuracy": accuracy or {}, "library_version": __version__}


def model_from_metadata(metadata: dict) -> torch.nn.Module:
    return build_model(metadata["backbone"], metadata["ways"], metadata["channels"], metadata["blocks"])


def save_checkpoint(path: Path, model: torch.nn.Module, metadata: dict) -> None:
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in model.state_dict().items()}
    _atomic_save(path, tensors, {"format": FORMAT, "fewshot": json.dumps(metadata)})


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, dict]:
    """The model, with its weights, and the checkpoint's metadata; CheckpointError if the file is unusable."""
    tensors, header = _read(path)
    if header.get("format") != FORMAT or "fewshot" not in header:
        raise CheckpointError(f"{Path(path).name} is a safetensors file but not a fewshot checkpoint "
                              f"(its metadata has no {FORMAT!r} format tag).")
    try:
        metadata = json.loads(header["fewshot"])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{Path(path).name}: its metadata is not valid JSON ({error}).") from None
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise CheckpointError(f"{Path(path).name}: its metadata lacks {', '.join(missing)}.")
    try:
        model = model_from_metadata(metadata)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{Path(path).name}: its metadata describes no valid model ({error}).") from None
    _check_weights(Path(path).name, model, tensors)
    model.load_state_dict(tensors)
    return model, metadata


def record_accuracy(path: Path, summary: dict) -> None:
    """Adds a test result (an Evaluation's dict plus its split) to the checkpoint's metadata."""
    model, metadata = load_checkpoint(path)
    metadata["accuracy"][f"{summary['ways']}w{summary['shots']}s"] = summary
    save_checkpoint(path, model, metadata)


def save_training_state(path: Path, optimizer: torch.optim.Optimizer, iterations: int) -> None:
    """Adam's moments and step counts, so that a resumed run continues exactly where it stopped."""
    state = optimizer.state_dict()
    tensors = {f"{index}.{key}": value.detach().cpu().reshape(-1) if value.dim() == 0 else value.detach().cpu()
               for index, entries in state["state"].items() for key, value in entries.items()}
    _atomic_save(path, tensors, {"param_groups": json.dumps(state["param_groups"]),
                                 "iterations": str(iterations)})


def load_training_state(path: Path, optimizer: torch.optim.Optimizer) -> int:
    """Restores the optimizer from `path`; returns the iterations it had done."""
    tensors, header = _read(path)
    state = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value.reshape(()) if key == "step" else value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(header["param_groups"])})
    return int(header["iterations"])


def _read(path: Path) -> tuple[dict, dict]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}.")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path.name} is not a readable safetensors file: corrupt, truncated, or "
                              f"another format ({error}).") from None


def _check_weights(name: str, model: torch.nn.Module, tensors: dict) -> None:
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    found = {key: tuple(t.shape) for key, t in tensors.items()}
    problems = [f"missing {key}" for key in expected if key not in found]
    problems += [f"unexpected {key}" for key in found if key not in expected]
    problems += [f"{key} has shape {found[key]}, expected {expected[key]}"
                 for key in expected if key in found and found[key] != expected[key]]
    if problems:
        raise CheckpointError(f"{name}: the weights do not match the model its metadata describes: "
                              + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "") + ".")


def _atomic_save(path: Path, tensors: dict, metadata: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
