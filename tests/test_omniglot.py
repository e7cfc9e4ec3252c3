import hashlib
import json
import os
import re
import shutil
import subprocess

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import fewshot.config
import fewshot.omniglot
from fewshot.config import default_data_root
from fewshot.omniglot import DatasetNotFound, load_omniglot, split_characters
from fake_omniglot import bar_drawing, write_fake_omniglot
from waiting import outcome_within



def test_layout_and_preprocessing(omniglot):
    assert omniglot.ink.shape == (1623, 20, 28, 28)
    assert sum(omniglot.is_background(i) for i in range(1623)) == 964
    assert len({omniglot.alphabet(i) for i in range(1623)}) == 50
    # ink is 1.0 on a background of 0.0: most pixels are background, and strokes reach full ink
    assert omniglot.ink.min() >= 0 and omniglot.ink.max() <= 1
    assert (omniglot.ink < 0.05).float().mean() > 0.8
    assert omniglot.ink.amax(dim=(2, 3)).min() > 0.5


def forbid_decoding_pngs(monkeypatch) -> None:
    """From now on in this test, decoding a PNG (which only preprocessing does) fails it."""
    def open_image(path, *args, **kwargs):
        raise AssertionError(f"a PNG was decoded: {path}")
    monkeypatch.setattr(fewshot.omniglot.Image, "open", open_image)


def test_second_load_decodes_no_png(data_root, omniglot, monkeypatch):
    """Omniglot's 32,460 drawings are preprocessed once (about 20 s); later loads read the cache only."""
    forbid_decoding_pngs(monkeypatch)
    assert torch.equal(load_omniglot(data_root).ink, omniglot.ink)


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


# Pinned on purpose: each set's characters, in order, must stay the same across versions and machines, so that
# a run's validation and test accuracy keep measuring the same characters (a changed seed, permutation or
# listing order fails here). The first 16 hex digits of the sha256 of the JSON list of the set's character names
# ("images_background/<alphabet>/<character>"). If a split is changed deliberately, recompute them with
#   PYTHONPATH=.:tests python3 -c "from test_omniglot import *; d = load_omniglot(default_data_root());
#                                  print({split: split_checksums(d, split) for split in PINNED_SPLITS})"
PINNED_SPLITS = {
    "lake": {"train": "852db4c5e600d45f", "val": "73cc76f24b914f51", "test": "980c8bb2237ca392"},
    "maml-paper": {"train": "3f2e347ec858ccea", "val": "c7c8b8c23b40718c", "test": "1850c89679f8795d"},
}


def split_checksums(data, split: str) -> dict:
    parts = split_characters(data, split)
    return {name: hashlib.sha256(json.dumps([data.characters[i] for i in indices]).encode()).hexdigest()[:16]
            for name, indices in parts.items()}


@pytest.mark.parametrize("split", PINNED_SPLITS)
def test_each_split_is_the_pinned_one(omniglot, split):
    assert split_checksums(omniglot, split) == PINNED_SPLITS[split]


def test_missing_data_offline_names_the_layout(tmp_path):
    with pytest.raises(DatasetNotFound, match="images_background"):
        load_omniglot(str(tmp_path), cache_dir=str(tmp_path / "cache"), download=False)


def test_a_failed_download_names_the_layout_and_the_error(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, root, background, download):
            raise OSError("no route to host")
    monkeypatch.setattr(torchvision.datasets, "Omniglot", Offline)
    with pytest.raises(DatasetNotFound) as error:
        load_omniglot(str(tmp_path), cache_dir=str(tmp_path / "cache"), download=True)
    message = str(error.value)
    assert message.startswith("Could not download Omniglot (no route to host).")
    assert f"under {tmp_path.resolve()}: omniglot-py/images_background/<alphabet>/<character>/<drawing>.png" in message


@pytest.mark.parametrize("environment, folders, chosen", [
    pytest.param("env", ["data", "shared"], "env", id="env-first"),
    pytest.param("", ["data", "shared"], "data", id="empty-env-is-unset"),
    pytest.param(None, ["shared"], "shared", id="shared-without-data"),
    pytest.param(None, ["data without omniglot-py", "shared"], "shared", id="data-needs-omniglot-py"),
    pytest.param(None, [], "data", id="neither-data-for-the-download"),
])
def test_data_root_is_env_then_data_then_shared(tmp_path, monkeypatch, environment, folders, chosen):
    """$FEWSHOT_DATA, else the first of <repo>/data/omniglot and <repo>/../shared/omniglot holding omniglot-py/."""
    places = {"env": tmp_path / "elsewhere", "data": tmp_path / "repo" / "data" / "omniglot",
              "shared": tmp_path / "shared" / "omniglot"}
    monkeypatch.setattr(fewshot.config, "REPO_ROOT", tmp_path / "repo")
    for folder in folders:
        if folder == "data without omniglot-py":
            places["data"].mkdir(parents=True)
        else:
            (places[folder] / "omniglot-py").mkdir(parents=True)
    if environment is None:
        monkeypatch.delenv("FEWSHOT_DATA", raising=False)
    else:
        monkeypatch.setenv("FEWSHOT_DATA", str(places["env"]) if environment == "env" else environment)
    assert default_data_root() == str(places[chosen])


def load_tiny(root):
    return load_omniglot(str(root), cache_dir=str(root.parent / "cache"), download=False)


def test_cache_round_trip(tiny, monkeypatch):
    """A tiny fake dataset goes through preprocessing and the cache, and comes back the same from the cache."""
    first = load_tiny(tiny)
    forbid_decoding_pngs(monkeypatch)
    second = load_tiny(tiny)
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


def test_a_cache_that_cannot_be_written_is_said_and_the_drawings_are_used_all_the_same(tiny, tmp_path, capsys):
    """A full disk or a read-only home: the load succeeds (a server keeps it; a failure it would redo at every
    visit), and stderr says why the next load decodes again."""
    (tmp_path / "a-file").write_text("")
    unwritable = load_omniglot(str(tiny), cache_dir=str(tmp_path / "a-file" / "cache"), download=False)
    assert "Omniglot's cache could not be written" in capsys.readouterr().err
    assert torch.equal(unwritable.ink, load_tiny(tiny).ink)


def refusal(root) -> str:
    """The message load_omniglot refuses the dataset at `root` with: one line."""
    with pytest.raises(DatasetNotFound) as refused:
        load_tiny(root)
    assert "\n" not in str(refused.value)
    return str(refused.value)


DRAWING = "omniglot-py/images_evaluation/Beta/character01/07.png"


def test_a_fifo_among_the_drawings_is_refused_not_waited_for(tiny):
    """Opening a FIFO waits for a writer: every page that reads Omniglot would wait for ever, the whole class'."""
    (tiny / DRAWING).unlink()
    os.mkfifo(tiny / DRAWING)
    refused = outcome_within(lambda: load_tiny(tiny))
    assert isinstance(refused, DatasetNotFound) and f"{DRAWING} in {tiny}" in str(refused)


@pytest.mark.parametrize("link", ["nowhere.png", "07.png"], ids=["dangling", "loop"])
def test_a_drawing_that_links_nowhere_is_named_in_a_dataset_not_found(tiny, link):
    """An OSError would be a traceback on the Draw page, which catches DatasetNotFound."""
    (tiny / DRAWING).unlink()
    (tiny / DRAWING).symlink_to(link)
    assert "07.png" in refusal(tiny)


@pytest.mark.parametrize("size", [(3000, 3000), (400, 400)], ids=["9-megapixels", "over-PIL's-limit"])
def test_a_drawing_huge_in_pixels_is_refused_before_it_is_decoded(tiny, monkeypatch, size):
    """A PNG of a few kilobytes can hold 178 million pixels, which PIL decodes (seconds and hundreds of MB, for
    each such drawing) and above which it raises DecompressionBombError, no OSError."""
    if size == (400, 400):  # PIL's limit, scaled down: the error of a 20,000 x 20,000 PNG, without one
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # it raises above twice as many
    Image.new("1", size, 1).save(tiny / DRAWING)
    assert DRAWING in refusal(tiny)


def cache_of(root):
    (cache,) = (root.parent / "cache").iterdir()
    return cache


def test_a_cache_larger_than_its_drawings_is_rebuilt_unread(tiny, monkeypatch):
    """The cache of 1623 characters takes 25.5 MB: a larger file at its name is not the cache, and is not parsed
    (safetensors parses headers of up to 100 MB: seconds and gigabytes, at every load)."""
    first = load_tiny(tiny)
    os.truncate(cache_of(tiny), 10**9)  # sparse: no gigabyte written
    monkeypatch.setattr(fewshot.omniglot, "safe_open", lambda *args, **kwargs: pytest.fail("the file was parsed"))
    assert torch.equal(load_tiny(tiny).ink, first.ink)
    assert cache_of(tiny).stat().st_size < 10**6  # and rebuilt


def test_a_fifo_at_the_cache_name_is_rebuilt_not_waited_for(tiny):
    """Opening a FIFO waits for a writer, holding Python's lock: every page that loads Omniglot would hang. A writer
    comes after 10 s, so that the test ends even then, and leaves a mark if the FIFO is still there: opened by it,
    it ended a wait (a reader that did not wait has replaced the FIFO by then)."""
    first = load_tiny(tiny)
    cache = cache_of(tiny)
    cache.unlink()
    os.mkfifo(cache)
    waited = tiny.parent / "waited"
    writer = subprocess.Popen(["sh", "-c", 'sleep 10; [ -p "$0" ] && exec 3> "$0" && : > "$1"', cache, waited])
    try:
        assert torch.equal(load_tiny(tiny).ink, first.ink) and cache.is_file()
    finally:
        writer.kill()
        writer.wait()
    assert not waited.exists()


def test_a_cache_whose_drawings_have_another_shape_is_rebuilt(tiny):
    first = load_tiny(tiny)
    cache = cache_of(tiny)
    with safe_open(str(cache), framework="pt") as f:
        metadata, grey = f.metadata(), f.get_tensor("grey")
    save_file({"grey": grey[:, :, :, :27].contiguous()}, str(cache), metadata=metadata)  # smaller: within the bound
    assert torch.equal(load_tiny(tiny).ink, first.ink)


def count_decodes(monkeypatch) -> list:
    """The drawings read (decoded) from now on in this test, in a list that grows."""
    read = fewshot.omniglot._read_drawing
    decoded = []

    def counted(root, relative_path):
        decoded.append(relative_path)
        return read(root, relative_path)
    monkeypatch.setattr(fewshot.omniglot, "_read_drawing", counted)
    return decoded


def test_a_corrupt_drawing_is_not_decoded_again_until_it_changes(tiny, monkeypatch):
    """Streamlit caches no failure: every page visit of every student decoded the drawings up to the bad one."""
    png = tiny / DRAWING
    good = png.read_bytes()
    png.write_bytes(os.urandom(len(good)))  # damaged in place: the listing (names and sizes) is unchanged
    decoded = count_decodes(monkeypatch)
    message = refusal(tiny)
    assert DRAWING in message and decoded  # the first load decodes up to it
    decoded.clear()
    assert refusal(tiny) == message and decoded == []  # the second says the same at once
    png.write_bytes(good)  # copied again from the original Omniglot: of the same size
    os.utime(png, ns=(0, 10**18))  # the original's time, as `cp -p` keeps it (and as the clock of file times is
    # coarse, two writes a millisecond apart may get the same)
    assert load_tiny(tiny).ink.shape == (4, 20, 28, 28) and DRAWING in decoded


def test_a_corrupt_drawing_replaced_by_another_listing_is_tried_again(tiny, monkeypatch):
    png = tiny / DRAWING
    good = png.read_bytes()
    png.write_bytes(good[:len(good) // 2])
    decoded = count_decodes(monkeypatch)
    refusal(tiny)
    png.write_bytes(good)
    decoded.clear()
    assert load_tiny(tiny).ink.shape == (4, 20, 28, 28) and DRAWING in decoded


def test_the_failures_remembered_are_bounded(tiny, tmp_path, monkeypatch):
    """Each folder and listing refused takes an entry: the oldest are forgotten (so decoded again)."""
    monkeypatch.setattr(fewshot.omniglot, "FAILURES_REMEMBERED", 1)
    (tiny / DRAWING).write_bytes(b"not a png")
    other = tmp_path / "other"
    shutil.copytree(tiny, other)
    decoded = count_decodes(monkeypatch)
    refusal(tiny)
    refusal(other)  # the second dataset refused: the first forgotten
    decoded.clear()
    refusal(other)
    assert decoded == []
    refusal(tiny)
    assert DRAWING in decoded
