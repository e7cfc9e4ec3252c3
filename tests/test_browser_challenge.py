"""The Challenge page in a real browser (Debian's Chromium, driven by Playwright) against `streamlit run`, at a
projector's 1024x768 with the sidebar open: play one 5-way task by clicking, then see the model's answers, the
truth and the score. The screenshot goes to test-artifacts/challenge-after-one-task.png."""

import shutil

import pytest

from browser import (ARTIFACTS, CHROMIUM, IDLE, REPO, launch_chromium, open_app_page, served_app,
                     truncated_texts)
from fewshot import challenge
from fewshot.checkpoints import load_checkpoint
from fewshot.omniglot import load_omniglot

pytestmark = [pytest.mark.slow, pytest.mark.browser]

TIMEOUT_MS = 60_000
LETTERS = "ABCDE"


@pytest.fixture(scope="module")
def app(tmp_path_factory, data_root):
    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    folder = tmp_path_factory.mktemp("browser-challenge")
    (folder / "checkpoints").mkdir()
    for name in challenge.MODEL_FILES.values():
        shutil.copyfile(REPO / "checkpoints" / name, folder / "checkpoints" / name)
    with served_app(folder, FEWSHOT_DATA=data_root, FEWSHOT_RUNS=str(folder / "runs"),
                    FEWSHOT_CHECKPOINTS=str(folder / "checkpoints"), FEWSHOT_DB=str(folder / "board.sqlite3")) as url:
        yield url


def test_one_task_played_by_clicking_shows_the_models_answers_and_the_score(app, data_root):
    level = challenge.Level(5, False)
    task = challenge.draw_task(challenge.unseen_characters(load_omniglot(data_root, download=False)), level, 1, 1)
    model_said = challenge.model_answers(*load_checkpoint(challenge.model_path(REPO / "checkpoints", 5)), task)[0]
    student = [task.truth[0], (task.truth[1] + 1) % 5] + task.truth[2:]  # all right but the second

    from playwright.sync_api import expect, sync_playwright
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = open_app_page(browser, app, {"width": 1024, "height": 768}, "Challenge", "Seed 1 · task 1 · 5-way",
                             TIMEOUT_MS)
        assert page.get_by_role("radio", name="5-way").is_checked()  # the settings, in the open sidebar
        for q, answer in enumerate(student):
            expect(page.get_by_text(f"Query {q + 1} of 5")).to_be_visible()
            page.wait_for_selector(IDLE)  # a click while the script runs may be lost (then the student clicks again)
            assert truncated_texts(page, "button") == []
            page.get_by_role("button", name=LETTERS[answer], exact=True).click()

        score = page.get_by_text("So far at 5-way")
        expect(score).to_be_visible()
        right = sum(m == t for m, t in zip(model_said, task.truth))
        assert score.inner_text().startswith(f"So far at 5-way: you 4 of 5 (80%), the model {right} of 5")
        results = [page.locator('[data-testid="stMarkdownContainer"]', has_text="Truth").nth(q).inner_text()
                   for q in range(5)]
        assert [line.split() for line in results] == [
            ["You", LETTERS[s], _mark(s, t), "Model", LETTERS[m], _mark(m, t), "Truth", LETTERS[t]]
            for s, m, t in zip(student, model_said, task.truth)]
        expect(page.get_by_role("button", name="Next task")).to_be_in_viewport()  # on the projector, unscrolled
        assert truncated_texts(page, "button") == []
        page.wait_for_selector(IDLE)
        page.mouse.move(1000, 760)  # off the drawings, whose hover shows a fullscreen button
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "challenge-after-one-task.png")
        page.get_by_role("button", name="Next task").dblclick()  # an impatient student: the next task, not two on
        expect(page.get_by_text("Seed 1 · task 2 · 5-way")).to_be_visible()
        page.wait_for_selector(IDLE)
        expect(page.get_by_text("Seed 1 · task 2 · 5-way")).to_be_visible()
        browser.close()


def _mark(said: int, truth: int) -> str:
    return "✓" if said == truth else "✗"
