"""fewshot/desks.py: the Draw page's drawings kept per browser in SQLite, bounded, and safe against what a URL or
a damaged file may hold."""

import sqlite3

import numpy as np
import pytest
import torch

from canvas_drawings import QUERY, SHAPES, canvas_image
from fewshot import desks, scoreboard
from fewshot.desks import DeskError, Desks, DeskTooLarge
from fewshot.drawing import drawing_to_ink
from fewshot.omniglot import uint8_to_ink

STROKES = {"version": "4.4.0", "objects": [{"type": "path", "path": [["M", 30, 40], ["Q", 30, 40, 80, 90]]}]}


def page_state() -> tuple:
    """(kept, filled, values) as the Draw page holds them: a drawn class, a blank canvas, a drawn query, an
    Omniglot-like fill, names and settings."""
    kept = {(0, 0): (STROKES, drawing_to_ink(canvas_image(SHAPES["circle"])).numpy()),
            (1, 0): ({"objects": []}, None),
            "query": (STROKES, drawing_to_ink(canvas_image(QUERY)).numpy())}
    grey = torch.randint(0, 256, (28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    filled = {(2, 3): uint8_to_ink(grey).numpy()}
    values = {"draw_name_0": "circle", "draw_ways_abc": 20, "draw_lr_abc": 0.4, "draw_query_answer": 3}
    return kept, filled, values


def assert_same_state(got: tuple, expected: tuple) -> None:
    (kept, filled, values), (expected_kept, expected_filled, expected_values) = got, expected
    assert kept.keys() == expected_kept.keys() and filled.keys() == expected_filled.keys()
    for slot, (strokes, ink) in expected_kept.items():
        assert kept[slot][0] == strokes
        assert (kept[slot][1] is None) if ink is None else np.array_equal(kept[slot][1], ink)  # exactly the same
    assert all(np.array_equal(filled[slot], ink) for slot, ink in expected_filled.items())
    assert values == expected_values


def test_a_desk_saved_is_loaded_as_it_was_by_another_opening_of_the_file(tmp_path):
    state = page_state()
    Desks(tmp_path / "desks.sqlite3").save("desk-a", desks.pack(*state))
    again = Desks(tmp_path / "desks.sqlite3")  # a restarted server
    assert_same_state(desks.unpack(again.load("desk-a")), state)
    assert again.load("desk-b") is None


def test_a_save_replaces_the_desks_last_one(tmp_path):
    store = Desks(tmp_path / "desks.sqlite3")
    kept, filled, values = page_state()
    store.save("desk-a", desks.pack(kept, filled, values))
    store.save("desk-a", desks.pack({}, {}, {"draw_name_0": ""}))  # Clear all
    assert_same_state(desks.unpack(store.load("desk-a")), ({}, {}, {"draw_name_0": ""}))


def test_the_file_is_beside_the_runs_and_the_scoreboard_unless_set(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("FEWSHOT_DB", raising=False)
    monkeypatch.delenv("FEWSHOT_DESKS", raising=False)
    assert desks.db_path() == tmp_path / "runs" / desks.DB_FILE
    assert desks.db_path().parent == scoreboard.db_path().parent and desks.db_path() != scoreboard.db_path()
    monkeypatch.setenv("FEWSHOT_DESKS", str(tmp_path / "elsewhere.sqlite3"))
    assert desks.db_path() == tmp_path / "elsewhere.sqlite3"


def test_new_desk_ids_are_random_and_only_their_shape_is_taken():
    made = {desks.new_desk() for _ in range(100)}
    assert len(made) == 100 and all(desks.is_desk(desk) for desk in made)
    desk = made.pop()
    for forged in ["../x", "a" * 10_000, desk + "a", desk[:-1], desk[:-1] + "/", desk[:-1] + ".", "",
                   None, 12, ["a" * 22], desk + "\n"]:
        assert not desks.is_desk(forged), forged


def test_a_desk_larger_than_the_bound_is_refused_and_keeps_its_last_save(tmp_path, monkeypatch):
    monkeypatch.setattr(desks, "MAX_DESK_BYTES", 3_000)
    store = Desks(tmp_path / "desks.sqlite3")
    small = desks.pack({}, {}, {"draw_name_0": "kept"})
    store.save("desk-a", small)
    large = desks.pack({}, {}, {"draw_name_0": "x" * 3_000})
    with pytest.raises(DeskTooLarge, match="more than the 3 KB a desk may keep"):
        store.save("desk-a", large)
    assert store.load("desk-a") == small


def test_the_least_recently_saved_desks_go_beyond_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(desks, "MAX_DESKS", 3)
    store = Desks(tmp_path / "desks.sqlite3")
    for desk in ["a", "b", "c"]:
        store.save(desk, desks.pack({}, {}, {"draw_name_0": desk}))
    store.save("a", desks.pack({}, {}, {"draw_name_0": "a again"}))  # "a" saved again: "b" is now the oldest
    store.save("d", desks.pack({}, {}, {}))
    assert [store.load(desk) is not None for desk in "abcd"] == [True, False, True, True]
    with sqlite3.connect(tmp_path / "desks.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM desks").fetchone() == (3,)


@pytest.mark.parametrize("damage", [
    lambda path: path.write_bytes(b"certainly not a database " * 100),
    lambda path: path.write_bytes(path.read_bytes()[:2048] + b"\xff" * 4096),  # its pages overwritten
], ids=["not-a-database", "overwritten"])
def test_a_damaged_file_is_one_line_error_not_a_traceback(tmp_path, damage):
    path = tmp_path / "desks.sqlite3"
    store = Desks(path)
    store.save("desk-a", desks.pack(*page_state()))
    with sqlite3.connect(path) as db:  # the WAL into the file, so that damaging the file damages the desks
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    damage(path)
    with pytest.raises(DeskError) as caught:
        Desks(path).load("desk-a")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_folder_that_cannot_be_made_is_a_desk_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DeskError, match="a-file"):
        Desks(tmp_path / "a-file" / "desks.sqlite3")


def test_a_file_locked_by_another_writer_is_a_desk_error_after_the_busy_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(desks, "BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "desks.sqlite3"
    store = Desks(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DeskError, match="locked"):
            store.save("desk-a", desks.pack({}, {}, {}))
    finally:
        other.close()
    store.save("desk-a", desks.pack({}, {}, {}))  # free again


@pytest.mark.parametrize("contents", [
    "not json", "[]", '{"kept": {}}', '{"kept": {"0_0_0": [null, null]}, "filled": {}, "values": {}}',
    '{"kept": {"0_0": [null, "not base64!"]}, "filled": {}, "values": {}}',
    '{"kept": {}, "filled": {"0_0": "AAAA"}, "values": {}}',  # 3 bytes, not 28x28
])
def test_contents_that_pack_does_not_make_are_a_desk_error(contents):
    with pytest.raises(DeskError, match="a desk that cannot be read"):
        desks.unpack(contents)
