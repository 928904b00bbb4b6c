"""Make a small, varied photo folder for the demo: coloured shapes on textured backgrounds, nested folders,
several formats (JPEG, PNG, WebP, HEIC), a rotated portrait. Deterministic; names say what each shows.

    python scripts/make_demo_photos.py OUTPUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLOURS = {"red": (220, 30, 40), "blue": (30, 70, 220), "green": (30, 170, 60), "yellow": (240, 210, 30)}
SHAPES = ("circle", "square", "triangle")
FORMATS = (("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"))


def background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    coarse = rng.integers(90, 230, (4, 5, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 12, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)


def draw_shape(image: Image.Image, shape: str, colour: tuple[int, int, int]) -> None:
    w, h = image.size
    side = min(w, h) // 2
    x0, y0 = (w - side) // 2, (h - side) // 2
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((x0, y0, x0 + side, y0 + side), fill=colour)
    elif shape == "square":
        draw.rectangle((x0, y0, x0 + side, y0 + side), fill=colour)
    else:
        draw.polygon([(x0 + side // 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=colour)


def main(out: Path) -> None:
    rng = np.random.default_rng(2026)
    count = 0
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        ext, fmt = FORMATS[i % len(FORMATS)]
        folder = out / colour
        folder.mkdir(parents=True, exist_ok=True)
        for variant in range(2):
            image = background(rng, (640, 480) if variant == 0 else (480, 640))
            draw_shape(image, shape, COLOURS[colour])
            image.save(folder / f"{colour}-{shape}-{variant + 1}.{ext}", fmt)
            count += 1
    try:
        from pillow_heif import register_heif_opener

        register_heif_opener()
        image = background(rng, (800, 600))
        draw_shape(image, "circle", COLOURS["red"])
        image.save(out / "phone-red-circle.heic", "HEIF", quality=85)
        count += 1
    except (ImportError, KeyError, OSError):
        pass
    portrait = background(rng, (640, 480))
    draw_shape(portrait, "square", COLOURS["blue"])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown upright: imgvec embeds it upright
    portrait.save(out / "camera-blue-square-rotated.jpg", "JPEG", exif=exif.tobytes())
    count += 1
    print(f"{count} photos in {out}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
