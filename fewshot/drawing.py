"""A drawing from the browser's canvas, made into the 28x28 ink image the model was trained on.

Omniglot's drawings are 105x105 one-bit images of strokes of an even width, which omniglot.py resizes to
28x28 with a Lanczos filter. A canvas drawing differs in size, position, stroke width and polarity, so we
redraw it the way Omniglot's drawings look, then preprocess it exactly as the training data was:

1. ink from the alpha channel (a transparent canvas) or from the distance to the background colour;
2. crop to the ink's bounding box, and thin the strokes to their centre lines (Guo & Hall, 1989) after a
   slight blur that keeps bumps on a stroke's edge from becoming branches;
3. redraw those centre lines on a 105x105 image, centred, with Omniglot's median longest side of the
   bounding box and median stroke width;
4. omniglot.preprocess_drawing (Lanczos to 28x28) and uint8_to_ink (ink 1.0 on 0.0), as in training.

The constants were measured on 2000 random drawings of all 50 alphabets at 105x105 (median, 5th-95th
percentile): bounding box's longest side 67 px (43-88), stroke width 5.5 px (5.0-6.1; width = 2 * area /
boundary pixels), box centre 50-51 of 0..104. At 28x28 (5000 drawings, `ink_statistics`): ink mass 65
(30-105), longest side 18 px (12-24), stroke width 1.60 px (1.41-1.89).
"""

import numpy as np
import torch
from PIL import Image, ImageFilter

from .omniglot import preprocess_drawing, uint8_to_ink

OMNIGLOT_SIZE = 105  # Omniglot's drawings are 105x105 pixels
CHARACTER_SIDE = 67.0  # median longest side of a character's bounding box there, in pixels
STROKE_WIDTH = 5.5  # median stroke width there, in pixels
WORKING_SIDE = 128  # the drawing is thinned at this size (longest side), finer than Omniglot's 61.5 px
SMOOTHING = 1.5  # radius of the Gaussian blur before thinning, in working pixels
INK_THRESHOLD = 0.5


class BlankDrawing(ValueError):
    """An image without ink."""


def drawing_to_ink(image: np.ndarray) -> torch.Tensor:
    """A canvas image (RGBA, RGB or grey array, any size) as the model's input: [28, 28] floats, ink 1.0."""
    omniglot_like = Image.fromarray(np.where(redraw_like_omniglot(image), 0, 255).astype(np.uint8))
    return uint8_to_ink(torch.from_numpy(preprocess_drawing(omniglot_like).copy()))


def redraw_like_omniglot(image: np.ndarray) -> np.ndarray:
    """The drawing as Omniglot would have stored it: a 105x105 boolean image, True where there is ink."""
    ink = ink_of(image)
    rows, cols = np.nonzero(ink > INK_THRESHOLD)
    if len(rows) == 0:
        raise BlankDrawing("The drawing is blank: draw a character first.")
    crop = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = WORKING_SIDE / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    working = Image.fromarray(np.round(crop * 255).astype(np.uint8)).resize(size, Image.BILINEAR)
    working = np.asarray(working.filter(ImageFilter.GaussianBlur(SMOOTHING))) / 255  # bumps would be spurs
    centre_lines = np.argwhere(thin(working > INK_THRESHOLD)) + 0.5  # pixel centres, (row, col)
    if len(centre_lines) == 0:  # the resized ink fell under the threshold: keep the brightest pixel
        centre_lines = np.argwhere(working == working.max())[:1] + 0.5
    low, high = centre_lines.min(0), centre_lines.max(0)
    extent = (high - low).max()
    dot = extent <= stroke_width(working > INK_THRESHOLD)  # centre lines no longer than the stroke is wide: a dot,
    # however the pen wobbled or the canvas' edge clipped it, not a line to stretch to a character's size
    scale = 0.0 if dot else (CHARACTER_SIDE - STROKE_WIDTH) / extent
    points = (centre_lines - (low + high) / 2) * scale + OMNIGLOT_SIZE / 2
    return draw_strokes(points, STROKE_WIDTH, OMNIGLOT_SIZE)


def thin(mask: np.ndarray) -> np.ndarray:
    """The one-pixel-wide centre lines of a boolean image's strokes: Guo & Hall's parallel thinning (1989),
    which, unlike Zhang & Suen's, keeps diagonal strokes two pixels thick."""
    image = np.pad(mask, 1).astype(bool)
    changed = True
    while changed:
        changed = False
        for first_pass in (True, False):
            # the 8 neighbours, clockwise from the one above: P2 .. P9 in the papers
            p2, p3, p4, p5 = image[:-2, 1:-1], image[:-2, 2:], image[1:-1, 2:], image[2:, 2:]
            p6, p7, p8, p9 = image[2:, 1:-1], image[2:, :-2], image[1:-1, :-2], image[:-2, :-2]
            connectivity = _count(~p2 & (p3 | p4), ~p4 & (p5 | p6), ~p6 & (p7 | p8), ~p8 & (p9 | p2))
            neighbours = np.minimum(_count(p9 | p2, p3 | p4, p5 | p6, p7 | p8),
                                    _count(p2 | p3, p4 | p5, p6 | p7, p8 | p9))
            side = ((p2 | p3 | ~p5) & p4) if first_pass else ((p6 | p7 | ~p9) & p8)
            remove = image[1:-1, 1:-1] & (connectivity == 1) & (neighbours >= 2) & (neighbours <= 3) & ~side
            if remove.any():
                image[1:-1, 1:-1][remove] = False
                changed = True
    return image[1:-1, 1:-1]


def _count(*conditions: np.ndarray) -> np.ndarray:
    return np.sum(conditions, axis=0, dtype=np.uint8)


def draw_strokes(points: np.ndarray, width: float, size: int) -> np.ndarray:
    """A size x size boolean image, True on every pixel whose centre is within width / 2 of a point."""
    reach = int(np.ceil(width / 2)) + 1
    offsets = np.stack(np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1), indexing="ij"),
                       -1).reshape(-1, 2)
    pixels = np.floor(points)[:, None, :] + offsets  # [points, offsets, (row, col)]
    near = np.linalg.norm(pixels + 0.5 - points[:, None, :], axis=-1) <= width / 2
    pixels = pixels[near].astype(int)
    pixels = pixels[((pixels >= 0) & (pixels < size)).all(1)]
    image = np.zeros((size, size), dtype=bool)
    image[pixels[:, 0], pixels[:, 1]] = True
    return image


def ink_of(image: np.ndarray) -> np.ndarray:
    """Ink in [0, 1]: the alpha channel when it varies, else the distance of the grey level to the
    background, so both black-on-white and white-on-black work. The background is the median of the whole image,
    most of any drawing, not of its border: the browser's canvas sends an opaque white PNG, and a box drawn
    along its edges covers most of the border."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 4 and image[..., 3].min() < 255:
        return image[..., 3] / 255.0
    grey = image.astype(np.float64) if image.ndim == 2 else image[..., :3] @ np.array([0.299, 0.587, 0.114])
    return np.abs(grey - np.median(grey)) / 255.0


def ink_statistics(ink: torch.Tensor | np.ndarray) -> dict:
    """Ink mass, the bounding box's longest side and the stroke width of a 28x28 ink image, in pixels.

    The stroke width is 2 * area / boundary pixels of the ink, measured 4x enlarged to see below a pixel.
    """
    ink = np.asarray(ink, dtype=np.float32)
    rows, cols = np.nonzero(ink > 0.25)
    enlarged = np.asarray(Image.fromarray(ink, "F").resize((ink.shape[1] * 4, ink.shape[0] * 4), Image.BILINEAR))
    return {"mass": float(ink.sum()),
            "side": int(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1) if len(rows) else 0,
            "stroke_width": stroke_width(enlarged > 0.5) / 4}


def stroke_width(mask: np.ndarray) -> float:
    """Mean width of a boolean image's strokes: 2 * area / boundary pixels (a stroke has two sides)."""
    padded = np.pad(mask, 1)
    interior = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
                & padded[1:-1, :-2] & padded[1:-1, 2:])
    boundary = (mask & ~interior).sum()
    return 2 * mask.sum() / boundary if boundary else 0.0
