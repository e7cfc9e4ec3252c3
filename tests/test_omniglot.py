import os
import re
import shutil
import time

import pytest
import torch
from PIL import Image

from fewshot.omniglot import DatasetNotFound, load_omniglot, split_characters

TINY = {"images_background": {"Alpha": 2}, "images_evaluation": {"Beta": 1, "Gamma": 1}}


def test_layout_and_preprocessing(omniglot):
    assert omniglot.ink.shape == (1623, 20, 28, 28)
    assert sum(omniglot.is_background(i) for i in range(1623)) == 964
    assert len({omniglot.alphabet(i) for i in range(1623)}) == 50
    # ink is 1.0 on a background of 0.0: most pixels are background, and strokes reach full ink
    assert omniglot.ink.min() >= 0 and omniglot.ink.max() <= 1
    assert (omniglot.ink < 0.05).float().mean() > 0.8
    assert omniglot.ink.amax(dim=(2, 3)).min() > 0.5


def test_second_load_is_fast(data_root, omniglot):
    tick = time.perf_counter()
    load_omniglot(data_root)
    assert time.perf_counter() - tick < 2.0


@pytest.mark.parametrize("split, sizes", [("lake", (864, 100, 659)), ("maml-paper", (1100, 100, 423))])
def test_splits_are_disjoint_and_complete(omniglot, split, sizes):
    parts = split_characters(omniglot, split)
    assert tuple(len(parts[name]) for name in ("train", "val", "test")) == sizes
    sets = [set(parts[name]) for name in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == set(range(1623))


def test_lake_split_tests_on_unseen_alphabets(omniglot):
    parts = split_characters(omniglot, "lake")
    assert all(omniglot.is_background(i) for i in parts["train"] + parts["val"])
    assert not any(omniglot.is_background(i) for i in parts["test"])
    train_alphabets = {omniglot.alphabet(i) for i in parts["train"]}
    assert not train_alphabets & {omniglot.alphabet(i) for i in parts["test"]}


def test_splits_are_fixed(omniglot):
    assert split_characters(omniglot, "maml-paper") == split_characters(omniglot, "maml-paper")


def test_missing_data_offline_names_the_layout(tmp_path):
    with pytest.raises(DatasetNotFound, match="images_background"):
        load_omniglot(str(tmp_path), cache_dir=str(tmp_path / "cache"), download=False)


def write_fake_omniglot(root, alphabets: dict) -> None:
    """Omniglot's layout under `root`: {set: {alphabet: characters}}, each character 20 drawings of a bar."""
    for name, counts in alphabets.items():
        for alphabet, characters in counts.items():
            for c in range(1, characters + 1):
                folder = root / "omniglot-py" / name / alphabet / f"character{c:02d}"
                folder.mkdir(parents=True)
                for d in range(20):
                    bar_drawing(d).save(folder / f"{d:02d}.png")


def bar_drawing(d: int, size=(105, 105), mode="1") -> Image.Image:
    image = Image.new("L", size, 255)
    image.paste(0, (10 + d, 10, 40 + d, 90))  # a black bar
    return image.convert(mode)


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The data root of a tiny fake Omniglot, which load_omniglot takes for complete (its ALPHABETS)."""
    monkeypatch.setattr("fewshot.omniglot.ALPHABETS", TINY)
    write_fake_omniglot(tmp_path / "data", TINY)
    return tmp_path / "data"


def load_tiny(root):
    return load_omniglot(str(root), cache_dir=str(root.parent / "cache"), download=False)


def test_cache_round_trip(tiny):
    """A tiny fake dataset goes through preprocessing and the cache, and comes back the same."""
    first, second = load_tiny(tiny), load_tiny(tiny)
    assert first.characters == ["images_background/Alpha/character01", "images_background/Alpha/character02",
                                "images_evaluation/Beta/character01", "images_evaluation/Gamma/character01"]
    assert torch.equal(first.ink, second.ink)
    assert first.ink[0, 0, 14, 5] > 0.9 and first.ink[0, 0, 14, 20] < 0.1  # ink where the bar is, not elsewhere


def test_half_copied_dataset_names_the_missing_alphabets(tmp_path, monkeypatch):
    expected = {"images_background": {"Alpha": 1}, "images_evaluation": {name: 1 for name in "BCDEFG"}}
    monkeypatch.setattr("fewshot.omniglot.ALPHABETS", expected)
    write_fake_omniglot(tmp_path / "data", {"images_background": {"Alpha": 1}, "images_evaluation": {"B": 1}})
    with pytest.raises(DatasetNotFound) as error:
        load_tiny(tmp_path / "data")
    message = str(error.value)
    assert "images_evaluation has 1 of 6 alphabets (missing C, D, E, ...)" in message
    assert "images_background" not in message and "\n" not in message


def test_missing_characters_and_drawings_are_named_in_one_message(tiny):
    shutil.rmtree(tiny / "omniglot-py/images_background/Alpha/character02")
    (tiny / "omniglot-py/images_evaluation/Beta/character01/19.png").unlink()
    with pytest.raises(DatasetNotFound) as error:
        load_tiny(tiny)
    message = str(error.value)
    assert "images_background alphabets lack characters (Alpha has 1 of 2)" in message
    assert "characters without 20 drawings (images_evaluation/Beta/character01 has 19)" in message
    assert "\n" not in message


def test_added_alphabet_is_read_not_taken_from_the_cache(tiny):
    """The cache is named after the files, so one added after a first load makes a new cache."""
    assert len(load_tiny(tiny).characters) == 4
    write_fake_omniglot(tiny, {"images_evaluation": {"Delta": 1}})  # beyond ALPHABETS: read too
    assert "images_evaluation/Delta/character01" in load_tiny(tiny).characters


@pytest.mark.parametrize("damage", ["truncated", "random bytes"])
def test_corrupt_drawing_is_named(tiny, damage):
    png = tiny / "omniglot-py/images_evaluation/Beta/character01/07.png"
    good = png.read_bytes()
    png.write_bytes(good[:len(good) // 2] if damage == "truncated" else os.urandom(len(good)))
    relative_path = "omniglot-py/images_evaluation/Beta/character01/07.png"
    with pytest.raises(DatasetNotFound, match=re.escape(f"{relative_path} in {tiny} is corrupt or truncated")):
        load_tiny(tiny)


def test_drawing_of_another_size_and_mode_is_converted(tiny):
    bar_drawing(0, size=(60, 40), mode="RGB").save(tiny / "omniglot-py/images_background/Alpha/character01/00.png")
    ink = load_tiny(tiny).ink
    assert ink.shape == (4, 20, 28, 28) and ink[0, 0].max() > 0.9


def test_unreadable_cache_is_rebuilt(tiny):
    first = load_tiny(tiny)
    (cache,) = (tiny.parent / "cache").iterdir()
    cache.write_bytes(os.urandom(1000))
    assert torch.equal(load_tiny(tiny).ink, first.ink)
