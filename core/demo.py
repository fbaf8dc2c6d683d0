"""Demo data: Debian's Tux Paint stamps when installed, else a generated folder.

The generated set draws simple scenes (shapes, stripes, gradients) in class folders with a
sidecar caption per image, so every page has something meaningful to show offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")

_CLASSES: dict[str, str] = {
    "circles": "a {colour} circle",
    "squares": "a {colour} square",
    "triangles": "a {colour} triangle",
    "stripes": "{colour} stripes",
    "checkers": "a {colour} checkerboard",
    "rings": "{colour} rings",
    "gradients": "a {colour} gradient",
    "dots": "{colour} dots",
}
_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "orange": (240, 150, 30),
    "purple": (140, 60, 190),
    "teal": (30, 160, 160),
}


def demo_source() -> Path | None:
    """The Tux Paint stamps folder if the Debian package is installed."""
    return TUXPAINT_STAMPS if TUXPAINT_STAMPS.is_dir() else None


def write_generated_demo(out: str | Path, *, per_class: int = 24, size: int = 160, seed: int = 0) -> dict[str, int]:
    """Write ``per_class`` PNGs (+ .txt captions) for each class folder under ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for cls, template in _CLASSES.items():
        folder = out / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour_name = list(_COLOURS)[int(rng.integers(len(_COLOURS)))]
            image = _draw(cls, _COLOURS[colour_name], size, rng)
            image.save(folder / f"{cls}_{i:03d}.png")
            (folder / f"{cls}_{i:03d}.txt").write_text(template.format(colour=colour_name) + ".\n")
        counts[cls] = per_class
    return counts


def _draw(cls: str, colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(200, 256, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    c = size / 2 + rng.normal(0, size / 12, 2)
    r = size * rng.uniform(0.22, 0.36)
    if cls == "circles":
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=colour)
    elif cls == "squares":
        draw.rectangle([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=colour)
    elif cls == "triangles":
        draw.polygon([(c[0], c[1] - r), (c[0] - r, c[1] + r), (c[0] + r, c[1] + r)], fill=colour)
    elif cls == "stripes":
        step = int(rng.integers(10, 22))
        for x in range(0, size, 2 * step):
            draw.rectangle([x, 0, x + step - 1, size], fill=colour)
    elif cls == "checkers":
        step = int(rng.integers(14, 28))
        for y in range(0, size, step):
            for x in range(0, size, step):
                if (x // step + y // step) % 2 == 0:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=colour)
    elif cls == "rings":
        for k in range(4, 0, -1):
            rr = r * k / 4 * 1.3
            draw.ellipse([c[0] - rr, c[1] - rr, c[0] + rr, c[1] + rr], outline=colour, width=max(3, size // 30))
    elif cls == "gradients":
        t = np.linspace(0, 1, size)[None, :, None]
        arr = (np.asarray(background, float) * (1 - t) + np.asarray(colour, float) * t).repeat(size, axis=0)
        image = Image.fromarray(arr.astype(np.uint8))
    else:  # dots
        for _ in range(int(rng.integers(12, 30))):
            x, y = rng.uniform(0, size, 2)
            d = rng.uniform(4, 9)
            draw.ellipse([x - d, y - d, x + d, y + d], fill=colour)
    noise = rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, float) + noise, 0, 255).astype(np.uint8))
