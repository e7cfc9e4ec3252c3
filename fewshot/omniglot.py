"""Omniglot, read from torchvision's extracted folders, preprocessed once into a cached tensor file.

Preprocessing follows learn2learn and the MAML paper: each 105x105 drawing is resized to 28x28 with a
Lanczos filter, and ink becomes 1.0 on a background of 0.0.
"""

import hashlib
import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from . import files

IMAGE_SIZE = 28
DRAWINGS_PER_CHARACTER = 20
SETS = ("images_background", "images_evaluation")
CACHE_VERSION = "1"
SPLITS = ("lake", "maml-paper")
# Omniglot's drawings have 105 x 105 pixels, the Draw page's canvases 140 x 140. PIL decodes up to 179 million, from
# a PNG of kilobytes that a damaged file or a tampered browser may hold: seconds and hundreds of MB for each. (Here
# rather than in limits.py, which imports this module through config.py.)
MAX_DRAWING_PIXELS = 1000 * 1000
FAILURES_REMEMBERED = 4  # datasets whose corrupt drawing load_omniglot remembers (_preprocess)

# Omniglot's alphabets and how many characters each has: 30 background alphabets (964 characters), 20
# evaluation alphabets (659 characters). A dataset with less, a copy cut short, is refused. Tests replace it.
ALPHABETS = {
    "images_background": {
        "Alphabet_of_the_Magi": 20, "Anglo-Saxon_Futhorc": 29, "Arcadian": 26, "Armenian": 41,
        "Asomtavruli_(Georgian)": 40, "Balinese": 24, "Bengali": 46,
        "Blackfoot_(Canadian_Aboriginal_Syllabics)": 14, "Braille": 26, "Burmese_(Myanmar)": 34, "Cyrillic": 33,
        "Early_Aramaic": 22, "Futurama": 26, "Grantha": 43, "Greek": 24, "Gujarati": 48, "Hebrew": 22,
        "Inuktitut_(Canadian_Aboriginal_Syllabics)": 16, "Japanese_(hiragana)": 52, "Japanese_(katakana)": 47,
        "Korean": 40, "Latin": 26, "Malay_(Jawi_-_Arabic)": 40, "Mkhedruli_(Georgian)": 41, "N_Ko": 33,
        "Ojibwe_(Canadian_Aboriginal_Syllabics)": 14, "Sanskrit": 42, "Syriac_(Estrangelo)": 23, "Tagalog": 17,
        "Tifinagh": 55,
    },
    "images_evaluation": {
        "Angelic": 20, "Atemayar_Qelisayer": 26, "Atlantean": 26, "Aurek-Besh": 26, "Avesta": 26, "Ge_ez": 26,
        "Glagolitic": 45, "Gurmukhi": 45, "Kannada": 41, "Keble": 26, "Malayalam": 47, "Manipuri": 40,
        "Mongolian": 30, "Old_Church_Slavonic_(Cyrillic)": 45, "Oriya": 46, "Sylheti": 28, "Syriac_(Serto)": 23,
        "Tengwar": 25, "Tibetan": 42, "ULOG": 26,
    },
}


class DatasetNotFound(RuntimeError):
    """Omniglot is missing, incomplete or has a corrupt drawing; the message says what and what to do."""


_failures = {}  # (folder, listing key) -> (a refusal's message, the drawing refused, its _version then), oldest first
_failures_lock = threading.Lock()


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
    """1 - grey / 255, computed in place: one float copy of all Omniglot (100 MB), not three."""
    return grey.to(torch.float32, copy=True).div_(-255.0).add_(1.0)


def load_omniglot(root: str, cache_dir: str | None = None, download: bool = True) -> Omniglot:
    """Omniglot from `root`/omniglot-py, preprocessed on first use and cached (safetensors, no pickle).

    The cache is named after the list of PNG files and their sizes, so a dataset that changes (a file added,
    removed or of another size) is preprocessed again; an unreadable cache file is rebuilt.
    """
    root = Path(root).expanduser().resolve()
    _ensure_present(root, download)
    drawings = _list_drawings(root / "omniglot-py")
    _check_complete(drawings, root)
    characters = list(drawings)
    cache = _cache_path(drawings, cache_dir)
    grey = _read_cache(cache, characters)
    if grey is None:
        grey = _preprocess(root, drawings)
        _write_cache(cache, grey, characters)
    return Omniglot(ink=uint8_to_ink(grey), characters=characters)


def _write_cache(cache: Path, grey: torch.Tensor, characters: list) -> None:
    """Keeps the preprocessed drawings for the next load. A cache that cannot be written (a full disk, a read-only
    home) is said on stderr, and the drawings are used all the same: failing here made every page visit decode
    the whole dataset again (a server keeps a load that succeeds, not one that raised)."""
    metadata = {"characters": json.dumps(characters), "version": CACHE_VERSION}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        data = safetensors.torch.save({"grey": grey}, metadata=metadata)  # bytes: a full disk is an OSError
        files.replace_with(cache, lambda tmp: tmp.write_bytes(data))
    except OSError as error:
        print(f"fewshot: Omniglot's cache could not be written ({error}); it is decoded again at each load. Set "
              f"FEWSHOT_CACHE to a folder that can be written.", file=sys.stderr, flush=True)


def _list_drawings(folder: Path) -> dict[str, list]:
    """Each character ("images_background/<alphabet>/<character>") with its PNG files as sorted (name, size).

    Only directory listings and file sizes, no image decoding: a fraction of a second for all of Omniglot.
    DatasetNotFound for what cannot be listed: a link to nowhere, a folder that may not be read.
    """
    drawings = {}
    try:
        for name in SETS:
            for alphabet in _sorted_folders(folder / name):
                for character in _sorted_folders(alphabet.path):
                    with os.scandir(character.path) as entries:
                        pngs = sorted((e.name, e.stat().st_size) for e in entries if e.name.endswith(".png"))
                    drawings[f"{name}/{alphabet.name}/{character.name}"] = pngs
    except OSError as error:
        raise DatasetNotFound(f"Omniglot in {folder} cannot be read ({error}): copy it again, or delete that "
                              f"folder to download it again.") from None
    return drawings


def _sorted_folders(path) -> list:
    with os.scandir(path) as entries:
        return sorted((e for e in entries if e.is_dir()), key=lambda e: e.name)


def _check_complete(drawings: dict, root: Path) -> None:
    """Raises DatasetNotFound naming all that `drawings` lacks against ALPHABETS: a half-copied dataset."""
    problems = []
    for name, expected in ALPHABETS.items():
        found = [c.split("/")[1] for c in drawings if c.startswith(f"{name}/")]
        missing = [alphabet for alphabet in expected if alphabet not in found]
        if missing:
            problems.append(f"{name} has {len(expected) - len(missing)} of {len(expected)} alphabets "
                            f"(missing {_first_few(missing)})")
        short = [f"{alphabet} has {found.count(alphabet)} of {count}" for alphabet, count in expected.items()
                 if 0 < found.count(alphabet) < count]
        if short:
            problems.append(f"{name} alphabets lack characters ({_first_few(short)})")
    uneven = [f"{c} has {len(pngs)}" for c, pngs in drawings.items() if len(pngs) != DRAWINGS_PER_CHARACTER]
    if uneven:
        problems.append(f"characters without {DRAWINGS_PER_CHARACTER} drawings ({_first_few(uneven)})")
    if problems:
        raise DatasetNotFound(f"Omniglot in {root / 'omniglot-py'} is incomplete: {'; '.join(problems)}. "
                              f"Finish copying it, or delete that folder to download it again.")


def _first_few(names: list, shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def _listing_key(drawings: dict) -> str:
    """A name for the listing of the drawings: their files and sizes (_list_drawings)."""
    return hashlib.sha1(json.dumps(drawings).encode()).hexdigest()[:12]


def _cache_path(drawings: dict, cache_dir: str | None) -> Path:
    cache_dir = Path(cache_dir or os.environ.get("FEWSHOT_CACHE") or Path.home() / ".cache" / "fewshot")
    return cache_dir / f"omniglot{IMAGE_SIZE}-v{CACHE_VERSION}-{_listing_key(drawings)}.safetensors"


def _read_cache(cache: Path, characters: list) -> torch.Tensor | None:
    """The cached drawings of `characters`; None when the file is missing, unreadable, of other characters, or
    larger than theirs (_cache_bytes). As checkpoints are read: the file is opened once, as a regular file
    (files.open_regular: a FIFO at its name would wait for ever), and its size checked before safetensors parses it
    through the descriptor."""
    shape = [len(characters), DRAWINGS_PER_CHARACTER, IMAGE_SIZE, IMAGE_SIZE]
    try:
        with files.open_regular(cache) as file:
            if os.fstat(file.fileno()).st_size > _cache_bytes(characters):
                return None
            with safe_open(f"/dev/fd/{file.fileno()}", framework="pt") as f:
                grey = f.get_slice("grey")
                if (f.metadata()["characters"] == json.dumps(characters) and grey.get_dtype() == "U8"
                        and grey.get_shape() == shape):
                    return f.get_tensor("grey")
    except (OSError, SafetensorError, KeyError, TypeError, ValueError):  # TypeError: no metadata at all
        pass
    return None


def _cache_bytes(characters: list) -> int:
    """The most bytes the cache of `characters` takes: its drawings, one byte a pixel (25 MB for Omniglot), after a
    header that names the characters (77 KB), as JSON in a JSON string."""
    header = len(json.dumps(json.dumps(characters))) + 1024  # and the drawings' shape, the version
    return 8 + header + len(characters) * DRAWINGS_PER_CHARACTER * IMAGE_SIZE * IMAGE_SIZE


def _ensure_present(root: Path, download: bool) -> None:
    missing = [s for s in SETS if not (root / "omniglot-py" / s).is_dir()]
    if not missing:
        return
    layout = (f"Expected Omniglot in torchvision's layout under {root}: omniglot-py/images_background/<alphabet>/"
              f"<character>/<drawing>.png (30 alphabets) and omniglot-py/images_evaluation/... (20 alphabets); "
              f"point --data-root (or FEWSHOT_DATA) at the folder that holds omniglot-py/.")
    if not download:
        raise DatasetNotFound(layout)
    from torchvision.datasets import Omniglot as TorchvisionOmniglot
    try:
        for name in missing:  # torchvision shows a progress bar while it downloads
            TorchvisionOmniglot(str(root), background=(name == "images_background"), download=True)
    except Exception as error:  # offline, or the server refused: say what we needed
        raise DatasetNotFound(f"Could not download Omniglot ({error}). {layout}") from error


def _preprocess(root: Path, drawings: dict) -> torch.Tensor:
    """Every drawing, preprocessed; DatasetNotFound for the first that is no drawing (_read_drawing).

    Streamlit caches no failure: every visit of every page would decode the drawings again, up to that one. So
    the refusal is remembered for these folders and this listing (the cache's key) and raised again at once, while
    the drawing refused is unchanged. A changed listing, or that drawing written or replaced (copied again, of the
    same size too), is tried again. The last FAILURES_REMEMBERED refusals are kept.
    """
    key = (root, _listing_key(drawings))
    remembered = _failures.get(key)
    if remembered is not None:
        message, drawing, version = remembered
        if _version(root / drawing) == version:
            raise DatasetNotFound(message)
    grey = np.empty((len(drawings), DRAWINGS_PER_CHARACTER, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for c, (character, pngs) in enumerate(tqdm(drawings.items(), desc="Preprocessing Omniglot (once)",
                                               unit="character")):
        for d, (name, _size) in enumerate(pngs):
            drawing = f"omniglot-py/{character}/{name}"
            try:
                grey[c, d] = _read_drawing(root, drawing)
            except DatasetNotFound as refusal:
                _remember_failure(key, (str(refusal), drawing, _version(root / drawing)))
                raise
    return torch.from_numpy(grey)


def _remember_failure(key: tuple, failure: tuple) -> None:
    with _failures_lock:
        _failures.pop(key, None)  # to the end: the newest
        _failures[key] = failure
        while len(_failures) > FAILURES_REMEMBERED:
            del _failures[next(iter(_failures))]  # the oldest


def _version(path: Path) -> tuple | None:
    """What changes when a file is written or replaced: its inode, size and times; None where it cannot be read."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


def _read_drawing(root: Path, relative_path: str) -> np.ndarray:
    """The drawing at `relative_path`, preprocessed; DatasetNotFound for a file that is no drawing: corrupt, no
    regular file (a FIFO's read would wait for a writer), or of more than MAX_DRAWING_PIXELS."""
    try:
        with files.open_regular(root / relative_path) as f, Image.open(f) as image:  # reads the PNG's header only
            if image.width * image.height > MAX_DRAWING_PIXELS:
                raise DatasetNotFound(f"{relative_path} in {root} has {image.width} x {image.height} pixels, more "
                                      f"than the {MAX_DRAWING_PIXELS:,} a drawing may (Omniglot's have 105 x 105): "
                                      f"copy it again from the original Omniglot.")
            image.load()  # PIL reads lazily: decode the whole file here, where a bad one is caught
            return preprocess_drawing(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # PIL's, open_regular's
        raise DatasetNotFound(f"{relative_path} in {root} is corrupt or truncated: copy it again "
                              f"from the original Omniglot.") from error


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
