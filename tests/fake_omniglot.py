"""A fake Omniglot in Omniglot's layout, tiny and quick to write, for the tests of what reads it."""

from PIL import Image

TINY = {"images_background": {"Alpha": 2}, "images_evaluation": {"Beta": 1, "Gamma": 1}}


def write_fake_omniglot(root, alphabets: dict) -> None:
    """Omniglot's layout under `root`: {set: {alphabet: characters}}, each character 20 drawings of a bar."""
    for name, counts in alphabets.items():
        for alphabet, characters in counts.items():
            for c in range(1, characters + 1):
                folder = root / "omniglot-py" / name / alphabet / f"character{c:02d}"
                folder.mkdir(parents=True)
                for d in range(20):
                    bar_drawing(d).save(folder / f"{d:02d}.png")


def bar_drawing(d: int, size=(105, 105), mode="1") -> Image.Image:
    image = Image.new("L", size, 255)
    image.paste(0, (10 + d, 10, 40 + d, 90))  # a black bar
    return image.convert(mode)
