from collections import Counter

import pytest
import torch

from fewshot.tasks import TaskSampler


def distinct_images(characters=12):
    """Each character's drawings are distinct and asymmetric, so rotations can be told apart."""
    ink = torch.zeros(characters, 20, 28, 28)
    for c in range(characters):
        for d in range(20):
            ink[c, d, c, d] = 1.0  # one pixel at (row c, column d): unique per drawing
    return ink


def test_shapes_and_labels():
    batch = TaskSampler(distinct_images(), list(range(12)), ways=5, shots=2, queries=3).sample(4, seed=0)
    assert batch.support_x.shape == (4, 10, 1, 28, 28) and batch.query_x.shape == (4, 15, 1, 28, 28)
    assert batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert batch.query_y[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]


def test_same_seed_same_tasks_other_seed_other_tasks():
    sampler = TaskSampler(distinct_images(), list(range(12)), ways=5, shots=1, queries=5)
    a, b, c = sampler.sample(8, seed=3), sampler.sample(8, seed=3), sampler.sample(8, seed=4)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert not torch.equal(a.support_x, c.support_x)


def test_support_and_query_never_share_a_drawing():
    batch = TaskSampler(distinct_images(), list(range(12)), 5, 5, 15, rotations=False).sample(16, seed=0)
    for task in range(16):
        seen = {tuple(x.nonzero()[0].tolist()) for x in torch.cat([batch.support_x[task], batch.query_x[task]])}
        assert len(seen) == 100  # 5 classes x 20 drawings, all different


def test_rotation_is_chosen_per_class():
    """learn2learn's transform rotates every class of a task alike; here each class draws its own."""
    base = torch.zeros(28, 28)
    base[1, 2] = 1.0  # an asymmetric image: each quarter turn puts the pixel elsewhere
    rotated = [torch.rot90(base, k) for k in range(4)]
    sampler = TaskSampler(base.expand(12, 20, 28, 28), list(range(12)), ways=5, shots=1, queries=0)
    batch = sampler.sample(200, seed=0)
    rotations = [{next(k for k in range(4) if torch.equal(image, rotated[k])) for image in task[:, 0]}
                 for task in batch.support_x]
    assert set().union(*rotations) == {0, 1, 2, 3}
    assert sum(len(r) > 1 for r in rotations) > 150  # one rotation per task would never mix them


def test_each_query_shows_the_character_and_rotation_of_its_label_in_the_support_set():
    """Label k's queries are drawings of label k's support character, turned as its support drawings are."""
    def classes(batch, kind_of) -> list:  # per task and label: the kinds of its support and of its query drawings
        return [({kind_of(x) for x, y in zip(support_x, support_y) if y == label},
                 {kind_of(x) for x, y in zip(query_x, query_y) if y == label})
                for support_x, support_y, query_x, query_y in zip(batch.support_x, batch.support_y, batch.query_x,
                                                                  batch.query_y)
                for label in range(5)]

    def character(image) -> int:  # distinct_images draws character c in row c
        return int(image.nonzero()[0][1])

    base = torch.zeros(28, 28)
    base[1, 2] = 1.0  # one asymmetric image for every character: only the rotation tells classes apart

    def rotation(image) -> int:
        return next(k for k in range(4) if torch.equal(image[0], torch.rot90(base, k)))

    by_character = TaskSampler(distinct_images(), list(range(12)), 5, 2, 3, rotations=False).sample(20, seed=0)
    by_rotation = TaskSampler(base.expand(12, 20, 28, 28), list(range(12)), 5, 2, 3).sample(20, seed=0)
    for batch, kind_of in ((by_character, character), (by_rotation, rotation)):
        for support, query in classes(batch, kind_of):
            assert len(support) == 1 and query == support, (support, query)


def test_classes_stay_within_the_given_characters():
    ink = distinct_images(12)
    batch = TaskSampler(ink, [2, 5, 7], ways=3, shots=1, queries=1, rotations=False).sample(20, seed=0)
    rows = {int(image.nonzero()[0][0]) for image in batch.support_x[:, :, 0].flatten(0, 1)}
    assert rows == {2, 5, 7}


def test_affine_augmentation_moves_each_drawing_a_little_and_on_its_own():
    ink = torch.zeros(12, 20, 28, 28)
    ink[..., 11:17, 11:17] = 1.0  # a 6x6 square in the middle of every drawing
    plain = TaskSampler(ink, list(range(12)), ways=5, shots=1, queries=5, rotations=False).sample(4, seed=0)
    sampler = TaskSampler(ink, list(range(12)), ways=5, shots=1, queries=5, rotations=False, augment="affine")
    batch = sampler.sample(4, seed=0)
    assert torch.equal(batch.support_y, plain.support_y) and torch.equal(batch.query_y, plain.query_y)
    assert torch.equal(batch.query_x, sampler.sample(4, seed=0).query_x)  # still reproducible from the seed
    images = torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 2)  # [tasks * 30, 28, 28]
    assert all(not torch.allclose(image, ink[0, 0], atol=1e-3) for image in images)
    assert len({tuple(image.flatten().round(decimals=3).tolist()) for image in images}) == len(images)
    mass = images.sum((1, 2))
    assert ((mass > 0.75 * 36) & (mass < 1.3 * 36)).all()  # scaled by 0.9 to 1.1 in each direction
    grid = torch.arange(28.0)
    centre_row = (images.sum(2) * grid).sum(1) / mass
    centre_column = (images.sum(1) * grid).sum(1) / mass
    most = 2 * 1.1 + 0.05  # a shift of up to 2 pixels, enlarged by up to 1.1 with the drawing
    assert ((centre_row - 13.5).abs() <= most).all() and ((centre_column - 13.5).abs() <= most).all()
    assert (centre_row - 13.5).abs().max() > 1 and (centre_column - 13.5).abs().max() > 1


ALPHABETS = ["a"] * 4 + ["b"] * 3 + ["c"] * 3 + ["d"] * 2  # the alphabet of each of distinct_images' 12 characters


def task_characters(batch) -> list:
    """The characters (distinct_images draws character c in row c) of each task's support and query drawings."""
    return [[int(image.nonzero()[0][1]) for image in torch.cat([support, query])]
            for support, query in zip(batch.support_x, batch.query_x)]


def test_within_one_alphabet_every_class_of_a_task_is_of_one_alphabet_large_enough():
    """3-way tasks draw 3 distinct characters of one of a, b and c; d, of 2 characters, is never drawn."""
    sampler = TaskSampler(distinct_images(), list(range(12)), 3, 1, 2, rotations=False, alphabets=ALPHABETS)
    batch = sampler.sample(60, seed=5)
    used = Counter()
    for support, characters in zip(batch.support_x, task_characters(batch)):
        alphabets = {ALPHABETS[c] for c in characters}
        assert len(alphabets) == 1 and len({int(image.nonzero()[0][1]) for image in support}) == 3
        used.update(alphabets)
    assert set(used) == {"a", "b", "c"}


def test_within_one_alphabet_the_alphabets_take_turns_and_the_seed_fixes_the_tasks():
    """Task i of seed s takes alphabet (s + i) mod 3, so tasks drawn in chunks from seeds s, s + 4, ..., as
    evaluation.py draws them, take the alphabets in turn; the same seed gives the same tasks again."""
    sampler = TaskSampler(distinct_images(), list(range(12)), 3, 1, 2, rotations=False, alphabets=ALPHABETS)
    batches = [sampler.sample(4, seed=7 + start) for start in (0, 4, 8)]
    alphabets = [ALPHABETS[characters[0]] for batch in batches for characters in task_characters(batch)]
    assert Counter(alphabets) == {"a": 4, "b": 4, "c": 4}
    assert all(alphabets[i] == alphabets[i + 3] for i in range(9))  # a turn of three, repeated
    again, other = sampler.sample(4, seed=7), sampler.sample(4, seed=8)
    assert torch.equal(again.support_x, batches[0].support_x) and torch.equal(again.query_x, batches[0].query_x)
    assert not torch.equal(other.support_x, batches[0].support_x)


def test_within_one_alphabet_refuses_more_ways_than_its_largest_alphabet_has_classes():
    def sampler(ways: int, rotations: bool) -> TaskSampler:
        return TaskSampler(distinct_images(), list(range(12)), ways, 1, 2, rotations, alphabets=ALPHABETS)

    assert len(sampler(4, rotations=False).pools) == 1  # a alone has 4 characters
    with pytest.raises(ValueError, match="^5 ways within one alphabet need 5 classes from one alphabet; the largest "
                                         "here, a, has 4$"):
        sampler(5, rotations=False)
    assert len(sampler(16, rotations=True).pools) == 1  # with rotations, a's 4 characters are 16 classes
    with pytest.raises(ValueError, match="^17 ways .* the largest here, a, has 16$"):
        sampler(17, rotations=True)


def test_within_one_alphabet_with_rotations_a_class_is_a_character_of_the_alphabet_turned():
    """16-way tasks of alphabet a (4 characters) with rotations: its 4 characters, each turned 4 ways, and
    each label's queries the same character and turn as its support drawing."""
    ink = distinct_images()
    kinds = {tuple(torch.rot90(ink[c, d], k).nonzero()[0].tolist()): (c, k)  # the pixel of each turned drawing
             for c in range(4) for d in range(20) for k in range(4)}  # of alphabet a: no two share a pixel
    assert len(kinds) == 4 * 20 * 4
    sampler = TaskSampler(ink, list(range(12)), 16, 1, 2, rotations=True, alphabets=ALPHABETS)
    batch = sampler.sample(3, seed=0)
    for support_x, query_x in zip(batch.support_x, batch.query_x):
        support = [kinds[tuple(image[0].nonzero()[0].tolist())] for image in support_x]
        query = [kinds[tuple(image[0].nonzero()[0].tolist())] for image in query_x]
        assert sorted(support) == [(c, k) for c in range(4) for k in range(4)]
        assert query == [kind for kind in support for _ in range(2)]


def test_a_batch_splits_into_groups_in_order_and_size_0_keeps_it_whole():
    batch = TaskSampler(torch.rand(10, 20, 28, 28), list(range(10)), 2, 1, 1).sample(5, seed=0)
    assert [len(group) for group in batch.groups(2)] == [2, 2, 1]
    assert torch.equal(torch.cat([group.support_x for group in batch.groups(2)]), batch.support_x)
    assert [len(group) for group in batch.groups(0)] == [5]
