"""Drawings as the Draw page's canvas makes them, for the tests: fabric.js' pencil draws strokes of an even
width with round caps and joins, black on a canvas of CANVAS_SIZE pixels."""

import base64
import io
import math

import numpy as np
from PIL import Image, ImageDraw

CANVAS_SIZE, STROKE_WIDTH = 140, 8  # as pages/draw.py


def circle(centre=(75, 75), radius=48, points=48) -> list:
    return [(centre[0] + radius * math.cos(a), centre[1] + radius * math.sin(a))
            for a in np.linspace(0, 2 * math.pi, points)]


# Five very different characters, each a list of strokes, each stroke a list of (x, y) canvas points.
SHAPES = {
    "vertical line": [[(75, 25), (75, 125)]],
    "horizontal line": [[(25, 75), (125, 75)]],
    "circle": [circle()],
    "X": [[(30, 30), (120, 120)], [(120, 30), (30, 120)]],
    "triangle": [[(75, 25), (125, 120), (25, 120), (75, 25)]],
}
# New drawings of two of them: smaller, elsewhere on the canvas, squashed or slanted.
QUERY_NAME = "circle"
QUERY = [[(x, 0.9 * y + 12) for x, y in circle(centre=(65, 70), radius=36)]]
SECOND_QUERY_NAME = "triangle"
SECOND_QUERY = [[(0.7 * x + 0.15 * y + 10, 0.75 * y + 20) for x, y in stroke] for stroke in SHAPES["triangle"]]


def canvas_image(strokes: list, size: int = CANVAS_SIZE, width: int = STROKE_WIDTH,
                 background=(0, 0, 0, 0), ink=(0, 0, 0, 255)) -> np.ndarray:
    """An RGBA array: the strokes on a transparent (by default) canvas."""
    image = Image.new("RGBA", (size, size), background)
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        draw.line(stroke, fill=ink, width=width, joint="curve")
        for x, y in (stroke[0], stroke[-1]):  # round caps
            draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=ink)
    return np.asarray(image)


def data_url(image: np.ndarray) -> str:
    """The PNG data URL the canvas sends to Streamlit."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
