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
