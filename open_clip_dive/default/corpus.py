"""The image-caption corpus of the embedded default: what the pre-trained model is aligned on, and the DiVE
reference set. Built deterministically from packaged data only, and disjoint from every evaluation set.

Two sources (see docs/default_data.md for why):
  * emoji (Google style, npm emoji-datasource-google): each emoji in 4 renditions (colour; small greyscale;
    its silhouette, white on black; a photo-negative greyscale) with captions made from its Unicode name and
    short names ("an emoji of grinning face", "a silhouette of cat", ...). The emoji *category* is never used in
    a caption: it is the label of a zero-shot task (on the Twitter-style images).
  * rendered glyphs: digits and letters typeset in the fonts that ship with matplotlib (or Pillow's own font),
    jittered in size, position, stroke and rotation, white on black and black on white, with captions
    ('the number "7"', 'the number seven', 'the letter "A"'). Typeset glyphs, not handwriting: MNIST and
    the UCI digits stay held out.
"""

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import datasets as D

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
FONT_FILES = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
              "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "cmr10.ttf", "cmss10.ttf",
              "cmtt10.ttf", "STIXGeneral.ttf", "STIXGeneralBolIta.ttf"]
VIEWS = ("colour", "grey", "silhouette", "negative")


def _small_grey(rgb: np.ndarray, size: int = 28) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).convert("L").resize((size, size), Image.BILINEAR))


def _small(a: np.ndarray, size: int = 28) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR))


def emoji_views(records: Sequence[dict], views: Sequence[str] = VIEWS) -> Tuple[List[np.ndarray], List[List[str]], List[str]]:
    """Each emoji in each view -> (images, candidate captions per image, view name per image)."""
    images, captions, view_names = [], [], []
    for r in records:
        colour = D.load_emoji_image(r["path"])
        name = r["name"]
        if r.get("tone"):
            name = f"{name}, {r['tone']}"
        alt = [s for s in r["short_names"] if s != r["name"]][:1]
        names = [name] + alt
        other = names[-1]
        for view in views:
            if view == "colour":
                img, caps = colour, names + [f"an emoji of {name}", f"a cartoon drawing of {other}"]
            elif view == "grey":
                img, caps = _small_grey(colour), [f"a black and white picture of {x}" for x in names] + [
                    f"a small grey image of {name}"]
            elif view == "silhouette":
                img, caps = _small(D.load_emoji_alpha(r["path"])), [f"a silhouette of {x}" for x in names] + [
                    f"the white shape of {name} on black"]
            elif view == "negative":
                img, caps = 255 - _small_grey(colour), [f"an inverted grey picture of {name}",
                                                        f"a negative image of {other}"]
            else:
                raise ValueError(f"unknown emoji view {view!r}; known: {VIEWS}")
            images.append(img)
            captions.append(caps)
            view_names.append(view)
    return images, captions, view_names


def _fonts() -> List[object]:
    """TrueType fonts: matplotlib's bundled ones when installed, else Pillow's built-in scalable font."""
    paths = []
    try:
        import importlib.util

        spec = importlib.util.find_spec("matplotlib")
        if spec is not None and spec.origin:
            d = os.path.join(os.path.dirname(spec.origin), "mpl-data", "fonts", "ttf")
            paths = [os.path.join(d, f) for f in FONT_FILES if os.path.isfile(os.path.join(d, f))]
    except Exception:  # pragma: no cover - a broken matplotlib install
        paths = []
    return paths or [None]


def glyph_images(seed: int = 0, size: int = 28, letters: bool = True) -> Tuple[List[np.ndarray], List[List[str]]]:
    """Typeset digits (and letters) in every font, both polarities, with jitter -> (images, captions)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    chars = [(str(d), [f'the number "{d}"', f"the digit {d}", f"the number {NUMBER_WORDS[d]}",
                       f"a {d} written on a page"]) for d in range(10)]
    if letters:
        chars += [(ch, [f'the letter "{ch}"', f"the letter {ch.lower()}", f"a written letter {ch}"])
                  for ch in LETTERS]
    images, captions = [], []
    fonts = _fonts()
    for ch, caps in chars:
        for fp in fonts:
            for inverted in (False, True):
                pt = int(rng.integers(round(size * 0.64), round(size * 0.93)))
                font = ImageFont.truetype(fp, pt) if fp else ImageFont.load_default(size=pt)
                im = Image.new("L", (size, size), 0)
                draw = ImageDraw.Draw(im)
                box = draw.textbbox((0, 0), ch, font=font)
                w, h = box[2] - box[0], box[3] - box[1]
                x = (size - w) // 2 - box[0] + int(rng.integers(-2, 3))
                y = (size - h) // 2 - box[1] + int(rng.integers(-2, 3))
                stroke = int(rng.integers(0, 2))
                draw.text((x, y), ch, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
                im = im.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
                a = np.asarray(im)
                images.append(255 - a if inverted else a)
                captions.append(list(caps))
    return images, captions


def caption_corpus(seed: int = 0, skin_tones: bool = False, limit: Optional[int] = None,
                   views: Sequence[str] = VIEWS) -> Tuple[List[np.ndarray], List[List[str]], List[str]]:
    """The whole corpus: (images, candidate captions per image, source per image: 'emoji-<view>' / 'glyph')."""
    records = D.emoji_records("google", skin_tones=skin_tones)
    if limit is not None:
        keep = np.random.default_rng(seed).permutation(len(records))[:max(1, limit // (2 * max(1, len(views))))]
        records = [records[i] for i in sorted(keep)]
    images, captions, names = emoji_views(records, views)
    sources = [f"emoji-{v}" for v in names]
    g_images, g_captions = glyph_images(seed)
    if limit is not None:
        keep = np.random.default_rng(seed + 1).permutation(len(g_images))[:max(1, limit - len(images))]
        g_images, g_captions = [g_images[i] for i in keep], [g_captions[i] for i in keep]
    return images + g_images, captions + g_captions, sources + ["glyph"] * len(g_images)


def reference_pairs(seed: int = 0, limit: Optional[int] = None):
    """One (image, caption) per corpus image, the caption drawn (seeded) from its candidates: the DiVE
    reference set. Images are uint8 arrays of varied sizes (64x64 RGB colour emoji, 28x28 grey otherwise)."""
    images, captions, sources = caption_corpus(seed, limit=limit)
    rng = np.random.default_rng(seed + 7)
    chosen = [c[int(rng.integers(len(c)))] for c in captions]
    return images, chosen, sources
