"""The challenge's tasks, the model's answers to them and the score (fewshot/challenge.py)."""

import hashlib
from pathlib import Path

import pytest
import torch

from fewshot import challenge
from fewshot.adaptation import adapt_and_classify
from fewshot.checkpoints import load_checkpoint
from fewshot.omniglot import ALPHABETS, split_characters

REPO = Path(__file__).resolve().parents[1]
LEVELS = [challenge.Level(ways, one_alphabet) for ways in challenge.WAYS for one_alphabet in (False, True)]


@pytest.fixture(scope="module")
def unseen(omniglot):
    return challenge.unseen_characters(omniglot)


@pytest.fixture(scope="module")
def drawing_of(omniglot) -> dict:
    """Each Omniglot drawing's bytes' digest -> (its character's name, the drawing's number)."""
    return {_digest(omniglot.ink[c, d]): (name, d) for c, name in enumerate(omniglot.characters)
            for d in range(omniglot.ink.shape[1])}


def _digest(ink: torch.Tensor) -> str:
    return hashlib.sha1(ink.contiguous().numpy().tobytes()).hexdigest()


def shipped(ways: int):
    return load_checkpoint(challenge.model_path(REPO / "checkpoints", ways))


def test_the_characters_are_the_lake_test_split_only(omniglot, unseen):
    test = split_characters(omniglot, "lake")["test"]
    assert unseen.characters == [omniglot.characters[c] for c in test]
    assert torch.equal(unseen.ink, omniglot.ink[test])
    assert {name.split("/")[0] for name in unseen.characters} == {"images_evaluation"}
    assert {unseen.alphabet(c) for c in range(len(unseen.characters))} == set(ALPHABETS["images_evaluation"])


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.label)
def test_a_task_is_its_seed_and_number_distinct_classes_and_new_query_drawings(unseen, drawing_of, level):
    task = challenge.draw_task(unseen, level, seed=3, number=2)
    again = challenge.draw_task(unseen, level, seed=3, number=2)
    assert torch.equal(task.support, again.support) and torch.equal(task.queries, again.queries)
    assert task.truth == again.truth and task.names == again.names
    for other in (challenge.draw_task(unseen, level, seed=3, number=3), challenge.draw_task(unseen, level, 4, 2)):
        assert not torch.equal(task.support, other.support)

    assert task.support.shape == (level.ways, 28, 28) and task.queries.shape == (challenge.QUERIES, 28, 28)
    support = [drawing_of[_digest(ink)] for ink in task.support]  # (character, drawing) of each class
    assert len({character for character, _ in support}) == level.ways  # distinct classes
    assert all(character.startswith("images_evaluation/") for character, _ in support)  # never background
    assert task.names == [f"{name.split('/')[1].replace('_', ' ')} / {name.split('/')[2]}" for name, _ in support]
    queries = [drawing_of[_digest(ink)] for ink in task.queries]
    assert all(0 <= t < level.ways for t in task.truth)
    for (character, drawing), truth in zip(queries, task.truth):
        assert character == support[truth][0]  # a drawing of its class
        assert drawing != support[truth][1]  # but not the support drawing
    assert len(set(queries)) == challenge.QUERIES  # two queries of one class are two drawings
    alphabets = {character.split("/")[1] for character, _ in support}
    if level.one_alphabet:
        assert len(alphabets) == 1


def test_mixed_tasks_span_alphabets_and_one_alphabet_tasks_cover_many(unseen, drawing_of):
    """Over 30 tasks: mixed ones draw from several alphabets, one-alphabet ones from several alphabets in turn,
    and the queries' classes vary (not always the first class)."""
    def alphabets(task):
        return {drawing_of[_digest(ink)][0].split("/")[1] for ink in task.support}
    mixed = [challenge.draw_task(unseen, challenge.Level(5, False), 0, n) for n in range(1, 31)]
    single = [challenge.draw_task(unseen, challenge.Level(5, True), 0, n) for n in range(1, 31)]
    assert min(len(alphabets(task)) for task in mixed) >= 2
    assert len(set().union(*(alphabets(task) for task in single))) >= 10
    assert {t for task in mixed for t in task.truth} == set(range(5))


def test_one_alphabet_tasks_come_from_the_alphabets_large_enough_and_too_many_ways_are_refused(unseen, drawing_of):
    """46-way tasks of one alphabet can only be of Oriya (46 characters) or Malayalam (47), and both come up;
    48 ways, more than any test alphabet has, is a one-line error."""
    sizes = ALPHABETS["images_evaluation"]
    large = {alphabet for alphabet, characters in sizes.items() if characters >= 46}
    drawn = {drawing_of[_digest(challenge.draw_task(unseen, challenge.Level(46, True), 0, n).support[0])][0]
             for n in range(1, 13)}
    assert {name.split("/")[1] for name in drawn} == large and len(large) == 2
    with pytest.raises(ValueError, match=f"^48 ways within one alphabet .* has {max(sizes.values())}$"):
        challenge.draw_task(unseen, challenge.Level(48, True), 0, 1)


@pytest.mark.parametrize("level", LEVELS[::2], ids=lambda level: level.label)
def test_model_answers_are_those_of_an_independent_adaptation(unseen, level):
    model, metadata = shipped(level.ways)
    task = challenge.draw_task(unseen, level, seed=5, number=1)
    answers, confidence = challenge.model_answers(model, metadata, task)
    probabilities = adapt_and_classify(model, task.support.unsqueeze(1), torch.arange(level.ways), metadata["inner_lr"],
                                       metadata["test_inner_steps"], task.queries.unsqueeze(1)).after
    assert answers == probabilities.argmax(-1).tolist()
    assert confidence == pytest.approx(probabilities.max(-1).values.tolist())


def test_a_model_of_other_ways_is_refused(unseen):
    model, metadata = shipped(20)
    with pytest.raises(ValueError, match="tells 20 classes apart; the task has 5"):
        challenge.model_answers(model, metadata, challenge.draw_task(unseen, challenge.Level(5, False), 1, 1))


def test_the_model_answers_the_tasks_far_above_chance(unseen):
    """The truth of each query is its class in the support set: were they misaligned, the shipped models (97 % and
    90 % on the test alphabets) would be at chance, 20 % and 5 %."""
    for ways, bar in ((5, 0.8), (20, 0.6)):
        model, metadata = shipped(ways)
        score = challenge.Score()
        for number in range(1, 9):
            task = challenge.draw_task(unseen, challenge.Level(ways, False), seed=11, number=number)
            score.add([0] * challenge.QUERIES, challenge.model_answers(model, metadata, task)[0], task.truth)
        assert score.model / score.queries >= bar, (ways, score)


def test_the_score_counts_right_answers_of_each():
    score = challenge.Score()
    score.add(student=[0, 1, 2, 3, 4], model=[0, 1, 2, 0, 0], truth=[0, 1, 0, 3, 4])
    assert (score.queries, score.student, score.model) == (5, 4, 2)
    score.add(student=[1], model=[2], truth=[2])
    assert (score.queries, score.student, score.model) == (6, 4, 3)


def test_task_seeds_differ_by_level_seed_and_number():
    seeds = {challenge.task_seed(level, seed, number) for level in LEVELS for seed in (0, 1) for number in (1, 2)}
    assert len(seeds) == len(LEVELS) * 4 and all(0 <= s < 2 ** 63 for s in seeds)
