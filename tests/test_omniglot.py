import time

import pytest
import torch

from fewshot.omniglot import DatasetNotFound, load_omniglot, split_characters


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


def test_cache_round_trip(tmp_path):
    """A tiny fake dataset goes through preprocessing and the cache, and comes back the same."""
    from PIL import Image
    root = tmp_path / "data"
    for s in ("images_background", "images_evaluation"):
        folder = root / "omniglot-py" / s / "Alphabet" / "character01"
        folder.mkdir(parents=True)
        for d in range(20):
            image = Image.new("L", (105, 105), 255)
            image.paste(0, (10 + d, 10, 40 + d, 90))  # a black bar
            image.convert("1").save(folder / f"{d:02d}.png")
    first = load_omniglot(str(root), cache_dir=str(tmp_path / "cache"), download=False)
    second = load_omniglot(str(root), cache_dir=str(tmp_path / "cache"), download=False)
    assert first.characters == ["images_background/Alphabet/character01", "images_evaluation/Alphabet/character01"]
    assert torch.equal(first.ink, second.ink)
    assert first.ink[0, 0, 14, 5] > 0.9 and first.ink[0, 0, 14, 20] < 0.1  # ink where the bar is, not elsewhere
