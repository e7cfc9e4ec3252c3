"""Run folders as training leaves them, written by hand: no process, no dataset, any content, in no time."""

import json
from pathlib import Path

from fewshot import runs
from fewshot.config import Config


def record(iteration: int) -> dict:
    """A metrics record, as training writes one per iteration."""
    return {"iteration": iteration, "train_loss": 1.0 / iteration, "train_accuracy": 0.5, "seconds": 0.5 * iteration}


def run_folder(root: Path, name: str, launch: str | None = None, metrics=(), started: float = 0.0,
               comparison: str | None = None, checkpoint: bytes | None = None,
               config: Config | None = None) -> runs.Run:
    """The folder of a run whose process has ended. launch.json holds the text `launch`, else what start()
    writes, with `config` (default: Config(iterations=6)); metrics.jsonl the lines `metrics` (records or text);
    checkpoint.safetensors the bytes `checkpoint`."""
    path = Path(root) / name
    path.mkdir(parents=True)
    if launch is None:
        launch = json.dumps({"pid": None, "started": started, "config": (config or Config(iterations=6)).to_dict(),
                             "comparison": comparison})
    (path / runs.LAUNCH).write_text(launch, errors="surrogateescape")  # "\udcff": the byte 0xff, not UTF-8
    lines = [line if isinstance(line, str) else json.dumps(line) for line in metrics]
    (path / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    if checkpoint is not None:
        (path / "checkpoint.safetensors").write_bytes(checkpoint)
    return runs.Run(path)
