"""Who may do what on a server shared by a class (fewshot/access.py): the instructor key."""

import threading
import time

import pytest

from fewshot import access


def test_without_a_key_every_session_may_do_everything(monkeypatch):
    monkeypatch.delenv("FEWSHOT_INSTRUCTOR_KEY", raising=False)
    assert access.instructor_key() is None
    assert access.may_manage(has_key=False) and access.may_stop("someone", "me", has_key=False)
    assert not access.is_right_key("")  # no key: nothing unlocks anything, nothing needs it


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_a_key_set_but_blank_is_an_error_never_an_open_server(monkeypatch, blank):
    """A teacher who meant to set a key (a typo, or FEWSHOT_INSTRUCTOR_KEY="$KEY" with KEY unset) is told, and
    no session may manage runs without the key: the app shows the error on every page (tests/test_app.py)."""
    monkeypatch.setenv("FEWSHOT_INSTRUCTOR_KEY", blank)
    message = "^FEWSHOT_INSTRUCTOR_KEY is set but blank: set it to a key, or unset it to open the app to everyone$"
    for asked in (access.instructor_key, lambda: access.may_manage(has_key=False),
                  lambda: access.may_stop("someone", "me", has_key=False), lambda: access.is_right_key("")):
        with pytest.raises(ValueError, match=message):
            asked()


def test_a_key_longer_than_its_field_takes_is_an_error(monkeypatch):
    monkeypatch.setenv("FEWSHOT_INSTRUCTOR_KEY", "k" * access.MAX_KEY_CHARS + "  ")
    assert access.instructor_key() == "k" * access.MAX_KEY_CHARS
    monkeypatch.setenv("FEWSHOT_INSTRUCTOR_KEY", "k" * (access.MAX_KEY_CHARS + 1))
    with pytest.raises(ValueError, match=f"^FEWSHOT_INSTRUCTOR_KEY has {access.MAX_KEY_CHARS + 1} characters: "):
        access.instructor_key()


def test_with_a_key_only_its_holder_manages_runs_and_others_stop_only_their_own(monkeypatch):
    monkeypatch.setenv("FEWSHOT_INSTRUCTOR_KEY", "  owl-42 ")
    assert access.is_right_key("owl-42") and access.is_right_key(" owl-42\n")
    for wrong in ("", "owl-4", "owl-421", "OWL-42", "owl-42x"):
        assert not access.is_right_key(wrong), wrong
    assert access.may_manage(has_key=True) and not access.may_manage(has_key=False)
    assert access.may_stop("me", "me", has_key=False)
    assert not access.may_stop("someone", "me", has_key=False) and not access.may_stop(None, "me", has_key=False)
    assert access.may_stop("someone", "me", has_key=True)


def test_the_key_is_compared_in_constant_time(monkeypatch):
    """hmac.compare_digest: the time of an answer does not tell how many characters of a guess were right."""
    compared = []
    monkeypatch.setattr(access.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or a == b)
    monkeypatch.setenv("FEWSHOT_INSTRUCTOR_KEY", "owl-42")
    assert access.is_right_key("owl-42") and compared == [(b"owl-42", b"owl-42")]


def test_wrong_keys_wait_one_after_another_for_the_whole_server_and_the_right_one_waits_for_none(monkeypatch):
    """check_key: three wrong guesses from three threads (three browser sessions) take three delays, not one;
    the right key, alone, is answered at once."""
    monkeypatch.setenv("FEWSHOT_INSTRUCTOR_KEY", "owl-42")
    monkeypatch.setattr(access, "WRONG_KEY_DELAY", 0.2)
    answers = []
    guesses = [threading.Thread(target=lambda: answers.append(access.check_key("owl-41"))) for _ in range(3)]
    start = time.perf_counter()
    for guess in guesses:
        guess.start()
    for guess in guesses:
        guess.join()
    assert answers == [False] * 3 and time.perf_counter() - start >= 3 * 0.2
    start = time.perf_counter()
    assert access.check_key("owl-42") and time.perf_counter() - start < 0.2
