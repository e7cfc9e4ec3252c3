"""A canvas drawing becomes a 28x28 image like Omniglot's training data: ink mass, size, stroke width, polarity."""

import numpy as np
import pytest
import torch

from canvas_drawings import SHAPES, canvas_image
from fewshot.drawing import BlankDrawing, drawing_to_ink, ink_statistics

# Omniglot at 28x28, 5th to 95th percentile over 5000 random drawings (see fewshot/drawing.py, and
# test_omniglot_ranges_are_measured_ones below, which measures them again when the dataset is here).
OMNIGLOT_RANGE = {"mass": (30, 105), "side": (12, 24), "stroke_width": (1.41, 1.89)}

SCRIBBLES = {  # more strokes, in corners, at other canvas sizes and stroke widths
    "small in a corner": ([[(10, 10), (40, 10), (40, 45)], [(12, 30), (30, 30)]], 150, 4),
    "large, thick": ([[(20, 130), (60, 20), (100, 130)], [(40, 80), (80, 80)]], 150, 16),
    "big canvas": ([[(100, 100), (300, 100)], [(200, 100), (200, 380)], [(120, 300), (280, 380)]], 400, 20),
}


def within(statistics: dict, names=("mass", "side", "stroke_width")) -> dict:
    """The statistics outside Omniglot's usual range, with that range: {} when all are inside."""
    return {name: (round(statistics[name], 2), OMNIGLOT_RANGE[name]) for name in names
            if not OMNIGLOT_RANGE[name][0] <= statistics[name] <= OMNIGLOT_RANGE[name][1]}


@pytest.mark.parametrize("name", ["circle", "X", "triangle"])
def test_canvas_characters_get_omniglots_ink_mass_size_and_stroke_width(name):
    ink = drawing_to_ink(canvas_image(SHAPES[name]))
    assert ink.shape == (28, 28) and ink.dtype == torch.float32
    assert within(ink_statistics(ink)) == {}


@pytest.mark.parametrize("name", SCRIBBLES)
def test_drawings_of_any_size_place_and_stroke_width_are_normalised(name):
    strokes, size, width = SCRIBBLES[name]
    assert within(ink_statistics(drawing_to_ink(canvas_image(strokes, size=size, width=width)))) == {}


@pytest.mark.parametrize("name", ["vertical line", "horizontal line"])
def test_a_single_stroke_gets_omniglots_size_and_stroke_width(name):
    # one straight stroke has less ink than most characters: only its size and width are Omniglot's
    assert within(ink_statistics(drawing_to_ink(canvas_image(SHAPES[name]))), ("side", "stroke_width")) == {}


def test_ink_is_one_on_a_background_of_zero_and_centred():
    ink = drawing_to_ink(canvas_image(SHAPES["circle"])).numpy()
    assert ink.max() > 0.95 and ink.min() >= 0
    assert ink[:3].max() < 0.02 and ink[-3:].max() < 0.02 and ink[:, :3].max() < 0.02 and ink[:, -3:].max() < 0.02
    rows, cols = np.nonzero(ink > 0.25)
    assert abs((rows.min() + rows.max()) / 2 - 13.5) <= 1 and abs((cols.min() + cols.max()) / 2 - 13.5) <= 1


@pytest.mark.parametrize("shrink", [2, 3])
def test_place_and_size_on_the_canvas_do_not_matter(shrink):
    """Each character drawn smaller, in a corner, with the same brush, is nearest to its own big drawing."""
    big = {name: drawing_to_ink(canvas_image(strokes)) for name, strokes in SHAPES.items()}
    for name, strokes in SHAPES.items():
        small = drawing_to_ink(canvas_image([[(x / shrink + 70, y / shrink + 5) for x, y in stroke]
                                             for stroke in strokes]))
        distances = {other: (small - ink).abs().mean().item() for other, ink in big.items()}
        assert min(distances, key=distances.get) == name, distances


def test_ink_comes_from_alpha_or_from_colour_whatever_the_polarity():
    transparent = drawing_to_ink(canvas_image(SHAPES["triangle"]))
    on_white = canvas_image(SHAPES["triangle"], background=(255, 255, 255, 255))
    on_black = canvas_image(SHAPES["triangle"], background=(0, 0, 0, 255), ink=(255, 255, 255, 255))
    grey = on_white[..., 0]
    for image in (on_white, on_black, on_white[..., :3], grey):
        assert torch.allclose(drawing_to_ink(image), transparent, atol=0.02)


@pytest.mark.parametrize("background", [(0, 0, 0, 0), (255, 255, 255, 255)])
def test_a_blank_canvas_is_refused(background):
    with pytest.raises(BlankDrawing, match="blank"):
        drawing_to_ink(canvas_image([], background=background))
    assert issubclass(BlankDrawing, ValueError)  # the pages catch ValueError


def test_omniglot_ranges_are_measured_ones(omniglot):
    drawings = omniglot.ink.reshape(-1, 28, 28)[torch.randperm(len(omniglot.ink) * 20,
                                                               generator=torch.Generator().manual_seed(0))[:1000]]
    measured = [ink_statistics(d) for d in drawings]
    for name, (low, high) in OMNIGLOT_RANGE.items():
        values = np.array([m[name] for m in measured])
        assert np.percentile(values, 5) == pytest.approx(low, rel=0.1), name
        assert np.percentile(values, 95) == pytest.approx(high, rel=0.1), name
