"""Checkpoints: safetensors weights plus JSON metadata to rebuild and describe the model. Never pickle.

A checkpoint file's safetensors header carries two metadata strings: "format" (FORMAT) and "fewshot", a
JSON object with the backbone and its sizes, the task shape, the algorithm and its inner loop, the data
split, the iterations trained, measured accuracy, and the library version. Loading checks the weights
against the model that metadata describes. A model meta-trained with MAML++'s learned inner learning rates
has "learned_inner_lr": true there, and its rates beside its weights, a tensor of one rate per inner step
for each parameter, named "inner_lr." + the parameter's name; load_checkpoint returns them in the metadata,
as "inner_lrs" ({parameter name: tensor}), and save_checkpoint takes them from there. A model with MAML++'s
per-step batch norm has "per_step_bn": true there, and batch-norm weights and biases of one row per inner step,
[inner_steps, features], which the model built from that metadata expects. What a run needs to
resume, the model and the optimizer state together, lives beside it in a second safetensors file. Every
write goes to a temporary file first, then takes the old one's place (files.py).
"""

import json
import os
import reprlib
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from . import __version__, files
from .config import FIELDS, Config
from .files import open_regular
from .models import build_model

FORMAT = "fewshot-checkpoint-v1"
TRAINING_STATE_FORMAT = "fewshot-training-state-v1"
MODEL_KEYS = ("backbone", "channels", "blocks", "ways")
REQUIRED_KEYS = MODEL_KEYS + ("shots", "algorithm", "inner_lr", "inner_steps", "split", "iterations",
                              "library_version")
# What loading accepts in the metadata: what a Config accepts (iterations may be 0). It is checked before
# anything is built from it, so that a crafted file can neither make loading take gigabytes or minutes nor end
# in a traceback.
WHOLE_NUMBER_BOUNDS = {name: (0 if name == "iterations" else FIELDS[name].metadata["at_least"],
                              FIELDS[name].metadata["at_most"])
                       for name in ("channels", "blocks", "ways", "shots", "inner_steps", "test_inner_steps",
                                    "iterations")}
MAX_INNER_LR = FIELDS["inner_lr"].metadata["at_most"]
CHOICES = {name: FIELDS[name].metadata["choices"] for name in ("backbone", "algorithm", "split")}
MAX_METADATA_CHARS = 64 * 1024  # a trained model's takes about 1 KiB
# A trained model's safetensors header (its tensors' names, shapes and offsets, and the metadata) takes a few KiB;
# safetensors parses up to 100 MB, which took 9 s and 1.1 GB (a 16 MB upload: 1 s and 220 MB, at every rerun).
MAX_HEADER_BYTES = 1 << 20
INNER_LR = "inner_lr."  # the prefix of the learned inner learning rates' tensors


class CheckpointError(ValueError):
    """A file that is not a usable fewshot checkpoint; the message, one line, names the file and says why."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # one line, whatever a file name or a library's error holds


def checkpoint_metadata(config: Config, iterations: int, accuracy: dict | None = None,
                        inner_lrs: dict | None = None) -> dict:
    """The metadata of a model trained with `config`; with `inner_lrs`, its learned inner learning rates."""
    metadata = {"backbone": config.backbone, "channels": config.channels, "blocks": config.blocks,
                "ways": config.ways, "shots": config.shots, "queries": config.queries,
                "algorithm": config.algorithm, "inner_lr": config.inner_lr, "inner_steps": config.inner_steps,
                "test_inner_steps": config.test_inner_steps, "split": config.split, "seed": config.seed,
                "iterations": iterations, "accuracy": accuracy or {}, "library_version": __version__}
    if config.per_step_bn:  # only then: a plain model's metadata stays what it was
        metadata["per_step_bn"] = True
    return metadata if inner_lrs is None else {**metadata, "inner_lrs": inner_lrs}


def inner_lr_of(metadata: dict):
    """The inner learning rate that a checkpoint's model adapts with: its learned rates (MAML++), a dict for
    maml.step_size, when it has them, else the number inner_lr."""
    return metadata.get("inner_lrs", metadata["inner_lr"])


def model_from_metadata(metadata: dict) -> torch.nn.Module:
    norm_steps = metadata["inner_steps"] if metadata.get("per_step_bn") else None
    return build_model(metadata["backbone"], metadata["ways"], metadata["channels"], metadata["blocks"], norm_steps)


def save_checkpoint(path: Path, model: torch.nn.Module | dict, metadata: dict) -> None:
    """Writes `model` (a module, or its state dict) with `metadata`, and the learned inner learning rates that
    metadata["inner_lrs"] may hold as tensors beside the weights."""
    weights = model if isinstance(model, dict) else model.state_dict()
    settings = {key: value for key, value in metadata.items() if key != "inner_lrs"}
    if "inner_lrs" in metadata:
        weights = {**weights, **{INNER_LR + name: rates for name, rates in metadata["inner_lrs"].items()}}
        settings["learned_inner_lr"] = True
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in weights.items()}
    _atomic_save(path, tensors, {"format": FORMAT, "fewshot": json.dumps(settings)})


def load_checkpoint(path: Path, largest: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """The model, with its weights, and the checkpoint's metadata; CheckpointError if the file is unusable.

    Each check comes before what it guards, so that a crafted file costs neither memory nor time: the metadata
    before anything is built from it, the tensors' names, shapes and dtypes in the file's header before their
    data is read, and their values before they go into the model. `largest` ({"channels": 256, "blocks": 6}) refuses
    a conv model with more, from its metadata, before its weights are read: the app's limits (adaptation.py).
    """
    path = Path(path)
    with _open(path) as f:
        metadata = _metadata(path.name, f.metadata() or {})
        _check_size(path.name, metadata, largest or {})
        _check_weights(path.name, _shapes(metadata), f)
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    not_finite = [name for name, tensor in tensors.items() if not tensor.isfinite().all()]
    if not_finite:
        raise CheckpointError(f"{path.name}: its weights {', '.join(not_finite[:5])} hold NaN or infinite values, "
                              f"as a run whose loss diverged saves them.")
    model = model_from_metadata(metadata)
    inner_lrs = {name.removeprefix(INNER_LR): tensors.pop(name) for name in list(tensors) if name.startswith(INNER_LR)}
    model.load_state_dict(tensors)
    return model, metadata | ({"inner_lrs": inner_lrs} if inner_lrs else {})


def record_accuracy(path: Path, summary: dict) -> None:
    """Adds a test result (an Evaluation's dict plus its split) to the checkpoint's metadata."""
    model, metadata = load_checkpoint(path)
    metadata["accuracy"][f"{summary['ways']}w{summary['shots']}s"] = summary
    save_checkpoint(path, model, metadata)


def save_training_state(path: Path, weights: dict, optimizer: torch.optim.Optimizer, iterations: int,
                        inner_lrs: dict | None = None) -> None:
    """The model's `weights` (its state dict), its learned `inner_lrs` if any, and Adam's moments and step counts,
    so that a resumed run continues exactly where it stopped. One file, written atomically: no crash or signal
    can leave the weights and the optimizer at different iterations."""
    state = optimizer.state_dict()
    tensors = {f"model.{name}": t.detach().cpu() for name, t in weights.items()}
    tensors.update({INNER_LR + name: rates.detach().cpu() for name, rates in (inner_lrs or {}).items()})
    tensors.update({f"optimizer.{index}.{key}": value.detach().cpu().reshape(-1) if value.dim() == 0 else
                    value.detach().cpu() for index, entries in state["state"].items() for key, value in entries.items()})
    _atomic_save(path, tensors, {"format": TRAINING_STATE_FORMAT, "param_groups": json.dumps(state["param_groups"]),
                                 "iterations": str(iterations)})


def load_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        inner_lrs: dict | None = None) -> int:
    """Restores the model, the learned `inner_lrs` if the run has them (in place), and the optimizer from `path`;
    returns the iterations they had done."""
    tensors, header = _read(path)
    if header.get("format") != TRAINING_STATE_FORMAT:
        raise CheckpointError(f"{Path(path).name} is not a fewshot training state ({TRAINING_STATE_FORMAT}).")
    try:  # a damaged file's tensor names, shapes or settings too
        weights, rates, state = {}, {}, {}
        for name, value in tensors.items():
            part, rest = name.split(".", 1)
            if part == "model":
                weights[rest] = value
            elif name.startswith(INNER_LR):
                rates[rest] = value
            else:
                index, key = rest.split(".", 1)
                state.setdefault(int(index), {})[key] = value.reshape(()) if key == "step" else value
        model.load_state_dict(weights)
        if rates.keys() != (inner_lrs or {}).keys():
            raise ValueError(f"it has {'' if rates else 'no '}learned inner learning rates")
        with torch.no_grad():
            for name, saved in rates.items():
                inner_lrs[name].copy_(saved)
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(header["param_groups"])})
        return int(header["iterations"])
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{Path(path).name} does not fit this run's model: {error}".splitlines()[0]) from None


def _read(path: Path) -> tuple[dict, dict]:
    """Every tensor of a safetensors file, and its header's metadata."""
    with _open(Path(path)) as f:
        return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}


def _open(path: Path):
    """The safetensors file at `path`, open: its header is read and checked, its tensors' data not yet.

    The file is opened once (open_regular) and checked as it is, a regular file whose header is at most
    MAX_HEADER_BYTES, before safetensors reads it through its descriptor (/dev/fd): no FIFO, whose open waits
    for a writer, and no other file can take its name meanwhile.
    """
    try:
        with open_regular(path) as f:
            header_bytes = int.from_bytes(f.read(8), "little")
            if MAX_HEADER_BYTES < header_bytes <= os.fstat(f.fileno()).st_size:  # a longer one: another format
                raise CheckpointError(f"{path.name}: its safetensors header takes {header_bytes:,} bytes, more "
                                      f"than the {MAX_HEADER_BYTES:,} a checkpoint's may.")
            return safe_open(f"/dev/fd/{f.fileno()}", framework="pt")
    except FileNotFoundError:
        raise CheckpointError(f"No checkpoint at {path}.") from None
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError) as error:  # ValueError: no regular file (open_regular)
        reason = str(error).replace(str(path), path.name)  # not its folder: an upload's is the server's temp folder
        raise CheckpointError(f"{path.name} is not a readable safetensors file: corrupt, truncated, or "
                              f"another format ({reason}).") from None


def _metadata(name: str, header: dict) -> dict:
    """The fewshot metadata in a safetensors header, parsed and checked against REQUIRED_KEYS and the bounds."""
    if header.get("format") != FORMAT or "fewshot" not in header:
        raise CheckpointError(f"{name} is a safetensors file but not a fewshot checkpoint "
                              f"(its metadata has no {FORMAT!r} format tag).")
    text = header["fewshot"]
    if len(text) > MAX_METADATA_CHARS:
        raise CheckpointError(f"{name}: its metadata takes {len(text):,} characters, more than the "
                              f"{MAX_METADATA_CHARS:,} a checkpoint's may.")
    try:
        metadata = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as error:  # also NaN, Infinity, a number of over 4300 digits, deep nesting
        raise CheckpointError(f"{name}: its metadata is not valid JSON ({error}).") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{name}: its metadata is not a JSON object of settings.")
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise CheckpointError(f"{name}: its metadata lacks {', '.join(missing)}.")
    for key, value in metadata.items():
        _check_setting(name, key, value)
    if metadata.get("learned_inner_lr") and metadata["inner_steps"] == 0:
        raise CheckpointError(f"{name}: its metadata gives learned inner learning rates for 0 inner steps.")
    if metadata.get("per_step_bn") and metadata["inner_steps"] == 0:
        raise CheckpointError(f"{name}: its metadata gives per-step batch norm for 0 inner steps.")
    return metadata


def _refuse_constant(constant: str):
    raise ValueError(f"{constant} is not a number JSON allows")


def _check_setting(name: str, key: str, value) -> None:
    """CheckpointError unless the metadata's `key` holds a value loading accepts; keys without a rule pass."""
    if key in WHOLE_NUMBER_BOUNDS:  # type() rather than isinstance: JSON's true and false are Python ints too
        low, high = WHOLE_NUMBER_BOUNDS[key]
        allowed, wanted = type(value) is int and low <= value <= high, f"a whole number from {low} to {high}"
    elif key == "inner_lr":  # a float from JSON may be inf (1e400), which the bound refuses
        allowed = type(value) in (int, float) and 0 <= value <= MAX_INNER_LR
        wanted = f"a number from 0 to {MAX_INNER_LR}"
    elif key in CHOICES:
        allowed, wanted = value in CHOICES[key], f"one of {', '.join(CHOICES[key])}"
    elif key == "accuracy":
        allowed, wanted = isinstance(value, dict), "a JSON object"
    elif key in ("learned_inner_lr", "per_step_bn"):
        allowed, wanted = type(value) is bool, "true or false"
    elif key == "inner_lrs":  # learned rates are tensors beside the weights, never JSON
        allowed, wanted = False, "allowed: learned inner learning rates are tensors of the file"
    else:
        return
    if not allowed:
        raise CheckpointError(f"{name}: its metadata gives {key} as {reprlib.repr(value)}, which is not {wanted}.")


def _check_size(name: str, metadata: dict, largest: dict) -> None:
    """CheckpointError if the metadata's conv model has more of a size (channels, blocks) than `largest` allows."""
    too_large = [f"{key} {metadata[key]} (at most {most})" for key, most in largest.items()
                 if metadata["backbone"] == "conv" and metadata[key] > most]
    if too_large:
        raise CheckpointError(f"{name}: its model is larger than this server adapts: {', '.join(too_large)}.")


def _shapes(metadata: dict) -> dict:
    """The name and shape of every tensor of the model the metadata describes, built on the meta device:
    shapes without memory."""
    with torch.device("meta"):
        model = model_from_metadata(metadata)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if metadata.get("learned_inner_lr"):
        shapes.update({INNER_LR + name: (metadata["inner_steps"],) for name, _ in model.named_parameters()})
    return shapes


def _check_weights(name: str, expected: dict, f) -> None:
    """CheckpointError unless the open file `f` holds exactly the `expected` tensors (name -> shape), as
    float32. Reads the file's header only."""
    found = set(f.keys())
    problems = [f"missing {key}" for key in expected if key not in found]
    problems += [f"unexpected {key}" for key in sorted(found - expected.keys())]
    for key in expected:
        if key in found:
            tensor = f.get_slice(key)
            shape, dtype = tuple(tensor.get_shape()), tensor.get_dtype()
            if shape != expected[key]:
                problems.append(f"{key} has shape {shape}, expected {expected[key]}")
            elif dtype != "F32":
                problems.append(f"{key} holds {dtype}, expected F32 (float32)")
    if problems:
        raise CheckpointError(f"{name}: the weights do not match the model its metadata describes: "
                              + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "") + ".")


def _atomic_save(path: Path, tensors: dict, metadata: dict) -> None:
    data = safetensors.torch.save(tensors, metadata=metadata)  # bytes: a full disk is then an OSError
    files.replace_with(Path(path), lambda tmp: tmp.write_bytes(data))
