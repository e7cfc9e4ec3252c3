"""Omniglot, read from torchvision's extracted folders, preprocessed once into a cached tensor file.

Preprocessing follows learn2learn and the MAML paper: each 105x105 drawing is resized to 28x28 with a
Lanczos filter, and ink becomes 1.0 on a background of 0.0.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

IMAGE_SIZE = 28
DRAWINGS_PER_CHARACTER = 20
SETS = ("images_background", "images_evaluation")
CACHE_VERSION = "1"
SPLITS = ("lake", "maml-paper")


class DatasetNotFound(RuntimeError):
    pass


@dataclass
class Omniglot:
    """All 1623 characters: `ink[c, d]` is drawing d of character c, 28x28 floats, ink 1.0 on 0.0."""

    ink: torch.Tensor  # [characters, 20, 28, 28] float32
    characters: list  # "images_background/<alphabet>/<character>" for each row of `ink`

    def is_background(self, index: int) -> bool:
        return self.characters[index].startswith("images_background/")

    def alphabet(self, index: int) -> str:
        return self.characters[index].split("/")[1]


def preprocess_drawing(image: Image.Image) -> np.ndarray:
    """A drawing (black ink on white) as the 28x28 uint8 grey image the model reads (255 = background)."""
    return np.asarray(image.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS))


def uint8_to_ink(grey: torch.Tensor) -> torch.Tensor:
    return 1.0 - grey.float() / 255.0


def load_omniglot(root: str, cache_dir: str | None = None, download: bool = True) -> Omniglot:
    """Omniglot from `root`/omniglot-py, preprocessed on first use and cached (safetensors, no pickle)."""
    root = Path(root).expanduser().resolve()
    cache = _cache_path(root, cache_dir)
    if not cache.exists():
        _ensure_present(root, download)
        grey, characters = _read_folders(root)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        save_file({"grey": grey}, str(tmp), metadata={"characters": json.dumps(characters),
                                                        "version": CACHE_VERSION})
        os.replace(tmp, cache)
    with safe_open(str(cache), framework="pt") as f:
        grey, characters = f.get_tensor("grey"), json.loads(f.metadata()["characters"])
    return Omniglot(ink=uint8_to_ink(grey), characters=characters)


def _cache_path(root: Path, cache_dir: str | None) -> Path:
    cache_dir = Path(cache_dir or os.environ.get("FEWSHOT_CACHE") or Path.home() / ".cache" / "fewshot")
    key = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return cache_dir / f"omniglot{IMAGE_SIZE}-v{CACHE_VERSION}-{key}.safetensors"


def _ensure_present(root: Path, download: bool) -> None:
    missing = [s for s in SETS if not (root / "omniglot-py" / s).is_dir()]
    if not missing:
        return
    layout = (f"Expected Omniglot in torchvision's layout under {root}:\n"
              f"  {root}/omniglot-py/images_background/<alphabet>/<character>/<drawing>.png  (30 alphabets)\n"
              f"  {root}/omniglot-py/images_evaluation/<alphabet>/<character>/<drawing>.png  (20 alphabets)\n"
              f"Point --data-root (or FEWSHOT_DATA) at the folder that holds omniglot-py/.")
    if not download:
        raise DatasetNotFound(layout)
    from torchvision.datasets import Omniglot as TorchvisionOmniglot
    try:
        for name in missing:  # torchvision shows a progress bar while it downloads
            TorchvisionOmniglot(str(root), background=(name == "images_background"), download=True)
    except Exception as error:  # offline, or the server refused: say what we needed
        raise DatasetNotFound(f"Could not download Omniglot ({error}).\n{layout}") from error


def _read_folders(root: Path) -> tuple[torch.Tensor, list]:
    folders = sorted(p for s in SETS for p in (root / "omniglot-py" / s).glob("*/*") if p.is_dir())
    grey = np.empty((len(folders), DRAWINGS_PER_CHARACTER, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for c, folder in enumerate(tqdm(folders, desc="Preprocessing Omniglot (once)", unit="character")):
        drawings = sorted(folder.glob("*.png"))
        if len(drawings) != DRAWINGS_PER_CHARACTER:
            raise DatasetNotFound(f"{folder} has {len(drawings)} drawings, expected {DRAWINGS_PER_CHARACTER}")
        for d, path in enumerate(drawings):
            grey[c, d] = preprocess_drawing(Image.open(path))
    characters = [str(f.relative_to(root / "omniglot-py")) for f in folders]
    return torch.from_numpy(grey), characters


def split_characters(data: Omniglot, split: str) -> dict:
    """Character indices of the train, validation and test sets; no character is in two of them.

    - lake: the 30 background alphabets for meta-training, minus 100 of their characters (fixed seed) held
      out for validation; the 20 evaluation alphabets, never seen in training, for testing.
    - maml-paper: the MAML paper's split of all 1623 characters: 1200 for meta-training (1100 train + 100
      validation) and 423 for testing, shuffled with a fixed seed.
    """
    generator = torch.Generator().manual_seed(1)
    if split == "lake":
        background = [i for i in range(len(data.characters)) if data.is_background(i)]
        evaluation = [i for i in range(len(data.characters)) if not data.is_background(i)]
        held_out = set(torch.tensor(background)[torch.randperm(len(background), generator=generator)[:100]].tolist())
        return {"train": [i for i in background if i not in held_out], "val": sorted(held_out), "test": evaluation}
    if split == "maml-paper":
        order = torch.randperm(len(data.characters), generator=generator).tolist()
        return {"train": sorted(order[:1100]), "val": sorted(order[1100:1200]), "test": sorted(order[1200:])}
    raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
