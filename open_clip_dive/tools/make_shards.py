"""Write the project's WebDataset shards from an ImageFolder tree, a caption table or in-memory arrays.

    python -m open_clip_dive.tools.make_shards imagefolder /data/imagenet/train --output shards/in1k-train \\
        --classnames imagenet --resize 256 --processes 8
    python -m open_clip_dive.tools.make_shards captions cc3m.tsv --output shards/cc3m --image-root /data/cc3m
    python -m open_clip_dive.tools.make_shards arrays digits.npz --output shards/digits --classnames names.txt

The format (what `python -m open_clip_dive.main` reads):
  <output>/<prefix>-000000.tar, -000001.tar, ...   each sample: `__key__`, the image as `jpg`/`png`/`webp`,
                                                     `cls` (the class index as ASCII digits) for class-labelled
                                                     data, `txt` (UTF-8) for captions
  <output>/sizes.json                               {"<prefix>-000000.tar": <samples>, ...}
  <output>/classnames.json                          JSON list of class names, index = `cls` (labelled data)
  <output>/make_shards.json                         what was written, from what, and what was skipped

The last line printed is the brace pattern to pass to --train-data / --val-data.

Robustness: each shard is written to a temporary name and renamed when complete, so a killed run leaves only
complete shards; `--resume` continues it (same arguments; complete shards are skipped). A non-empty output
directory is never written into without `--resume` or `--overwrite`. Unreadable images are skipped, counted
and listed in make_shards.json (`--strict` makes the first one an error instead).
"""

import argparse
import dataclasses
import glob
import hashlib
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
import tarfile
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DiveUsageError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
KEEP_EXT = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
STATE_DIR = ".make_shards"
MANIFEST = "make_shards.json"
FORMAT_VERSION = 1


class ShardError(DiveUsageError):
    """Bad input or output for the shard writer; one line naming the file and the fix."""


@dataclasses.dataclass
class ShardSet:
    """What was written: the directory, the brace pattern for --train-data, and the sample counts."""

    directory: str
    prefix: str
    sizes: Dict[str, int]
    classnames: Optional[List[str]] = None
    skipped: int = 0

    @property
    def num_samples(self) -> int:
        return sum(self.sizes.values())

    @property
    def num_shards(self) -> int:
        return len(self.sizes)

    @property
    def pattern(self) -> str:
        return shard_pattern(self.directory, self.prefix, self.num_shards)

    def __str__(self) -> str:
        return self.pattern


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def shard_pattern(directory: str, prefix: str, num_shards: int) -> str:
    if num_shards == 1:
        return os.path.join(directory, shard_name(prefix, 0))
    return os.path.join(directory, f"{prefix}-{{{0:06d}..{num_shards - 1:06d}}}.tar")


# ---------------------------------------------------------------------------------------------------------
# Encoding one sample (runs in the worker processes)
# ---------------------------------------------------------------------------------------------------------

def _encode_array(arr: np.ndarray, fmt: str, quality: int) -> Tuple[bytes, str]:
    from PIL import Image

    a = np.asarray(arr)
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and float(a.max()) <= 1.0 + 1e-6:
            a = a * 255.0  # floats in [0, 1]
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.transpose(a, (1, 2, 0))  # CHW -> HWC
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(f"image array of shape {tuple(np.shape(arr))} is not HxW, HxWx3, HxWx4 or CxHxW")
    im = Image.fromarray(a)
    return _encode_pil(im, fmt, quality)


def _encode_pil(im, fmt: str, quality: int) -> Tuple[bytes, str]:
    buf = io.BytesIO()
    if fmt == "jpg":
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        im.save(buf, format="JPEG", quality=quality)
    elif fmt == "webp":
        im.save(buf, format="WEBP", quality=quality)
    else:
        im.save(buf, format="PNG")
    return buf.getvalue(), fmt


def _resize_shorter(im, size: int):
    from PIL import Image

    w, h = im.size
    if min(w, h) <= size:
        return im
    s = size / min(w, h)
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)


def _encode_file(path: str, fmt: str, quality: int, resize: Optional[int], verify: bool) -> Tuple[bytes, str]:
    """`fmt == 'keep'` copies the file's bytes when its type can be stored as is (jpg/png/webp)."""
    from PIL import Image

    ext = os.path.splitext(path)[1].lower()
    if fmt == "keep" and not resize and ext in KEEP_EXT:
        with open(path, "rb") as f:
            data = f.read()
        if verify:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
        return data, KEEP_EXT[ext]
    with Image.open(path) as im:
        im.load()
        if resize:
            im = _resize_shorter(im, resize)
        if fmt == "keep":
            fmt = "png"
        if im.mode not in ("RGB", "RGBA", "L"):
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        return _encode_pil(im, fmt, quality)


@dataclasses.dataclass
class _Job:
    """One shard's work: everything a worker needs, picklable."""

    index: int
    name: str
    keys: List[str]
    paths: Optional[List[str]] = None          # file sources
    images: Optional[object] = None            # array source: the shard's images (array or list)
    labels: Optional[List[int]] = None
    captions: Optional[List[str]] = None
    extras: Optional[List[Dict[str, bytes]]] = None


@dataclasses.dataclass
class _Options:
    directory: str
    image_format: str
    quality: int
    resize: Optional[int]
    verify: bool
    strict: bool


def _write_shard(job: _Job, opt: _Options) -> Tuple[int, str, int, List[str]]:
    """Write one shard to a temporary file, then rename it; returns (index, name, count, skipped keys+reasons)."""
    final = os.path.join(opt.directory, job.name)
    tmp = os.path.join(opt.directory, STATE_DIR, f"{job.name}.tmp{os.getpid()}")
    skipped = []
    count = 0
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as sink:
        for j, key in enumerate(job.keys):
            try:
                if job.images is not None:
                    data, ext = _encode_array(job.images[j], opt.image_format, opt.quality)
                else:
                    data, ext = _encode_file(job.paths[j], opt.image_format, opt.quality, opt.resize, opt.verify)
            except Exception as e:  # an unreadable image: skip it, and say which
                what = job.paths[j] if job.paths is not None else f"array index {key}"
                if opt.strict:
                    raise ShardError(f"cannot read image {what}: {type(e).__name__}: {e}") from None
                skipped.append(f"{what}: {type(e).__name__}: {e}")
                continue
            sample = {"__key__": key, ext: data}
            if job.labels is not None:
                sample["cls"] = str(int(job.labels[j])).encode("ascii")
            if job.captions is not None:
                sample["txt"] = str(job.captions[j]).encode("utf-8")
            if job.extras is not None:
                sample.update(job.extras[j])
            _add_sample(sink, sample)
            count += 1
    os.replace(tmp, final)
    with open(os.path.join(opt.directory, STATE_DIR, job.name + ".json"), "w") as f:
        json.dump({"count": count, "skipped": skipped}, f)
    return job.index, job.name, count, skipped


def _add_sample(tar: tarfile.TarFile, sample: Dict[str, object]) -> None:
    """Members `<key>.<ext>` in sorted extension order, fixed owner and mtime: the same input gives the same bytes."""
    key = sample["__key__"]
    for ext in sorted(k for k in sample if k != "__key__"):
        data = sample[ext]
        if isinstance(data, str):
            data = data.encode("utf-8")
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mode, info.mtime, info.uname, info.gname = len(data), 0o444, 0, "", ""
        tar.addfile(info, io.BytesIO(data))


_WORKER_OPT: Optional[_Options] = None


def _init_worker(opt: _Options) -> None:
    global _WORKER_OPT
    _WORKER_OPT = opt  # workers only encode images (PIL / numpy): nothing here touches torch or OpenMP


def _run_job(job: _Job):
    return _write_shard(job, _WORKER_OPT)


# ---------------------------------------------------------------------------------------------------------
# The driver: plan -> (resume check) -> write missing shards -> sizes.json / classnames.json / manifest
# ---------------------------------------------------------------------------------------------------------

def _count_tar_samples(path: str) -> int:
    keys = set()
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            base = os.path.basename(m.name)
            if m.isfile() and "." in base:
                keys.add(os.path.join(os.path.dirname(m.name), base.split(".", 1)[0]))
    return len(keys)


def _fingerprint(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _our_files(directory: str, prefix: str) -> List[str]:
    names = glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + "-[0-9][0-9][0-9][0-9][0-9][0-9].tar"))
    names += [os.path.join(directory, n) for n in ("sizes.json", "classnames.json", MANIFEST, STATE_DIR)]
    return [n for n in names if os.path.lexists(n)]


def _prepare_output(directory: str, prefix: str, spec: dict, resume: bool, overwrite: bool) -> Optional[ShardSet]:
    """Apply the overwrite/resume rules; return the existing ShardSet when a resume finds the work done."""
    if resume and overwrite:
        raise ShardError("--resume and --overwrite contradict each other; pass one")
    from ..checks import check_writable_dir

    try:
        check_writable_dir(directory, "--output")  # a file, under a file, read-only: one line, not a traceback
    except DiveUsageError as e:
        raise ShardError(str(e)) from None
    fp = _fingerprint(spec)
    if os.path.isdir(directory) and os.listdir(directory):
        if overwrite:
            for p in _our_files(directory, prefix):
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
        elif resume:
            state = os.path.join(directory, STATE_DIR, "plan.json")
            manifest = os.path.join(directory, MANIFEST)
            if os.path.isfile(state):
                with open(state) as f:
                    old = json.load(f).get("fingerprint")
            elif os.path.isfile(manifest):
                with open(manifest) as f:
                    m = json.load(f)
                old = m.get("fingerprint")
                if old == fp:
                    return ShardSet(directory, m["prefix"], m["sizes"], m.get("classnames"), m.get("skipped_count", 0))
            else:
                raise ShardError(f"--resume: {directory} holds no interrupted make_shards run "
                                 f"(no {STATE_DIR}/plan.json); pick another --output or pass --overwrite")
            if old != fp:
                raise ShardError(f"--resume: {directory} was started with different inputs or options; rerun with "
                                 f"the same arguments, or pass --overwrite to start again")
        else:
            raise ShardError(f"output directory {directory} is not empty; pass --resume to continue an interrupted "
                             f"run or --overwrite to replace its shards")
    os.makedirs(os.path.join(directory, STATE_DIR), exist_ok=True)
    for stale in glob.glob(os.path.join(glob.escape(directory), STATE_DIR, "*.tmp*")):
        os.remove(stale)  # partial shards of a killed run
    with open(os.path.join(directory, STATE_DIR, "plan.json"), "w") as f:
        json.dump({"fingerprint": fp, "spec": spec}, f, default=str)
    return None


def _write(jobs: List[_Job], opt: _Options, prefix: str, spec: dict, classnames: Optional[List[str]],
           processes: int, progress: bool, extra_files: Optional[Dict[str, object]] = None,
           desc: str = "") -> ShardSet:
    from tqdm import tqdm

    directory = opt.directory
    state = os.path.join(directory, STATE_DIR)
    done, todo = {}, []
    for job in jobs:
        final = os.path.join(directory, job.name)
        if os.path.isfile(final):  # complete (renamed) shards of an interrupted run
            rec = os.path.join(state, job.name + ".json")
            if os.path.isfile(rec):
                with open(rec) as f:
                    r = json.load(f)
                done[job.index] = (job.name, r["count"], r["skipped"])
            else:  # killed between the rename and the record
                done[job.index] = (job.name, _count_tar_samples(final), [])
        else:
            todo.append(job)
    total = sum(len(j.keys) for j in jobs)
    bar = tqdm(total=total, initial=total - sum(len(j.keys) for j in todo), unit="img",
               desc=desc or os.path.basename(directory.rstrip("/")), disable=not progress, dynamic_ncols=True)
    sizes_by_index = {}
    try:
        if processes > 1 and len(todo) > 1:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(min(processes, len(todo)), initializer=_init_worker, initargs=(opt,)) as pool:
                for index, name, count, skipped in pool.imap_unordered(_run_job, todo):
                    done[index] = (name, count, skipped)
                    bar.update(len(jobs[index].keys))
        else:
            for job in todo:
                index, name, count, skipped = _write_shard(job, opt)
                done[index] = (name, count, skipped)
                bar.update(len(job.keys))
    finally:
        bar.close()
    skipped_all = []
    for index in sorted(done):
        name, count, skipped = done[index]
        sizes_by_index[index] = (name, count)
        skipped_all.extend(skipped)
    sizes = {name: count for _, (name, count) in sorted(sizes_by_index.items())}
    if sum(sizes.values()) == 0:
        raise ShardError(f"no sample could be written to {directory}: every image failed to load "
                         f"(first: {skipped_all[0] if skipped_all else '-'})")
    with open(os.path.join(directory, "sizes.json"), "w") as f:
        json.dump(sizes, f, indent=1)
    if classnames is not None:
        with open(os.path.join(directory, "classnames.json"), "w") as f:
            json.dump(list(classnames), f, indent=1, ensure_ascii=False)
    for name, content in (extra_files or {}).items():
        with open(os.path.join(directory, name), "w") as f:
            json.dump(content, f, indent=1, ensure_ascii=False)
    manifest = {"format_version": FORMAT_VERSION, "fingerprint": _fingerprint(spec), "prefix": prefix,
                "pattern": shard_pattern(directory, prefix, len(sizes)), "num_samples": sum(sizes.values()),
                "sizes": sizes, "classnames": classnames, "skipped_count": len(skipped_all),
                "skipped": skipped_all[:1000], "spec": spec}
    with open(os.path.join(directory, MANIFEST + ".tmp"), "w") as f:
        json.dump(manifest, f, indent=1, default=str, ensure_ascii=False)
    os.replace(os.path.join(directory, MANIFEST + ".tmp"), os.path.join(directory, MANIFEST))
    shutil.rmtree(state, ignore_errors=True)
    if skipped_all:
        print(f"make_shards: skipped {len(skipped_all)} unreadable image(s), listed in "
              f"{os.path.join(directory, MANIFEST)}; first: {skipped_all[0]}", file=sys.stderr)
    return ShardSet(directory, prefix, sizes, classnames, len(skipped_all))


def _plan(n: int, shard_size: int, shuffle: bool, seed: int) -> List[np.ndarray]:
    if shard_size < 1:
        raise ShardError(f"--shard-size must be at least 1, not {shard_size}")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    return [order[i:i + shard_size] for i in range(0, n, shard_size)]


def _check_common(image_format: str, processes: int, prefix: str) -> None:
    if image_format not in ("png", "jpg", "webp", "keep"):
        raise ShardError(f"image format must be png, jpg, webp or keep, not {image_format!r}")
    if processes < 1:
        raise ShardError(f"--processes must be at least 1, not {processes}")
    if not prefix or "/" in prefix or "." in prefix or "{" in prefix:
        raise ShardError(f"--prefix {prefix!r} must be a plain name without '/', '.' or braces")


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------

def write_array_shards(images, labels=None, classnames: Optional[Sequence[str]] = None, out_dir: str = None, *,
                       captions: Optional[Sequence[str]] = None, prefix: str = "shard", shard_size: int = 1000,
                       processes: int = 1, image_format: str = "png", quality: int = 95, shuffle: bool = False,
                       seed: int = 0, resume: bool = False, overwrite: bool = False, progress: bool = True,
                       extra_files: Optional[Dict[str, object]] = None, keys: Optional[Sequence[str]] = None,
                       source: str = "arrays", desc: str = "") -> ShardSet:
    """Write in-memory images (N x H x W [x C] uint8, or a list of such arrays) with labels and/or captions.

    labels: N ints (-> `cls`) with `classnames` (-> classnames.json); captions: N strings (-> `txt`).
    extra_files: {filename: JSON-able} written next to sizes.json (e.g. templates.json).
    Returns a ShardSet; `.pattern` is the brace pattern for --train-data."""
    if out_dir is None:
        raise ShardError("write_array_shards needs out_dir")
    _check_common(image_format if image_format != "keep" else "png", processes, prefix)
    if image_format == "keep":
        image_format = "png"
    n = len(images)
    if n == 0:
        raise ShardError("no images to write")
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(labels) != n:
            raise ShardError(f"{n} images but {len(labels)} labels")
        if classnames is not None and (labels.min() < 0 or labels.max() >= len(classnames)):
            raise ShardError(f"labels span {labels.min()}..{labels.max()} but there are {len(classnames)} class names")
    if captions is not None and len(captions) != n:
        raise ShardError(f"{n} images but {len(captions)} captions")
    if keys is not None and len(keys) != n:
        raise ShardError(f"{n} images but {len(keys)} keys")
    if labels is None and captions is None:
        raise ShardError("give labels (class-labelled data) and/or captions (image-text pairs)")
    classnames = list(classnames) if classnames is not None else None
    out_dir = os.path.abspath(out_dir)
    h = hashlib.sha256()
    for i in range(0, n, max(1, n // 64)):  # cheap content fingerprint for --resume
        h.update(np.ascontiguousarray(images[i]).tobytes())
    if labels is not None:
        h.update(labels.tobytes())
    if captions is not None:
        h.update("\n".join(map(str, captions)).encode())
    spec = {"source": source, "n": n, "content": h.hexdigest()[:16], "prefix": prefix, "shard_size": shard_size,
            "image_format": image_format, "quality": quality, "shuffle": shuffle, "seed": seed,
            "classnames": classnames}
    existing = _prepare_output(out_dir, prefix, spec, resume, overwrite)
    if existing is not None:
        return existing
    jobs = []
    for s, idx in enumerate(_plan(n, shard_size, shuffle, seed)):
        jobs.append(_Job(
            index=s, name=shard_name(prefix, s),
            keys=[str(keys[i]) if keys is not None else f"{i:09d}" for i in idx],
            images=_take(images, idx),
            labels=[int(labels[i]) for i in idx] if labels is not None else None,
            captions=[str(captions[i]) for i in idx] if captions is not None else None))
    opt = _Options(out_dir, image_format, quality, None, False, True)
    return _write(jobs, opt, prefix, spec, classnames, processes, progress, extra_files, desc)


def _take(images, idx):
    """The shard's images: a stacked array when they share a shape, else a list (images of varied sizes)."""
    if isinstance(images, np.ndarray):
        return images[idx]
    items = [np.asarray(images[i]) for i in idx]
    return np.stack(items) if len({a.shape for a in items}) == 1 else items


def _find_images(root: str) -> Tuple[List[str], List[Tuple[str, int]]]:
    """torchvision ImageFolder order: classes = sorted sub-directories, files sorted within each."""
    if not os.path.isdir(root):
        raise ShardError(f"ImageFolder root {root} is not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ShardError(f"{root} has no class sub-directories (expected the ImageNet train layout "
                         f"root/<class>/<image>.JPEG)")
    items = []
    for ci, c in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, c), followlinks=True):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.lower().endswith(IMG_EXTENSIONS) and not fn.startswith("."):
                    items.append((os.path.join(dirpath, fn), ci))
    if not items:
        raise ShardError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {root}")
    return classes, items


def _resolve_classnames(spec: Optional[str], folder_names: List[str]) -> List[str]:
    if not spec:
        return list(folder_names)
    if spec == "imagenet":
        from open_clip import IMAGENET_CLASSNAMES

        if len(folder_names) != len(IMAGENET_CLASSNAMES):
            raise ShardError(f"--classnames imagenet needs the 1000 ImageNet class folders; found {len(folder_names)}")
        return list(IMAGENET_CLASSNAMES)
    from ..prompts import load_classnames

    names = load_classnames(spec, flag="--classnames")
    if len(names) != len(folder_names):
        raise ShardError(f"--classnames {spec} has {len(names)} names but there are {len(folder_names)} classes")
    return names


def write_imagefolder_shards(root: str, out_dir: str, *, classnames: Optional[str] = None, prefix: str = "shard",
                             shard_size: int = 1000, processes: int = 1, image_format: str = "keep",
                             quality: int = 95, resize: Optional[int] = None, shuffle: bool = True, seed: int = 0,
                             verify: bool = True, strict: bool = False, resume: bool = False,
                             overwrite: bool = False, progress: bool = True) -> ShardSet:
    """ImageFolder tree (root/<class>/<image>) -> shards with `cls`; classnames.json from the folder names
    (or `classnames`: 'imagenet', or a file: JSON list / {folder: name} / one name per line)."""
    _check_common(image_format, processes, prefix)
    root = os.path.abspath(root)
    folders, items = _find_images(root)
    names = _resolve_classnames_file(classnames, folders)
    out_dir = os.path.abspath(out_dir)
    spec = {"source": "imagefolder", "root": root, "n": len(items),
            "listing": hashlib.sha256("\n".join(p for p, _ in items).encode()).hexdigest()[:16],
            "prefix": prefix, "shard_size": shard_size, "image_format": image_format, "quality": quality,
            "resize": resize, "shuffle": shuffle, "seed": seed, "classnames": names}
    existing = _prepare_output(out_dir, prefix, spec, resume, overwrite)
    if existing is not None:
        return existing
    jobs = [_Job(index=s, name=shard_name(prefix, s), keys=[f"{i:09d}" for i in idx],
                 paths=[items[i][0] for i in idx], labels=[items[i][1] for i in idx])
            for s, idx in enumerate(_plan(len(items), shard_size, shuffle, seed))]
    opt = _Options(out_dir, image_format, quality, resize, verify, strict)
    return _write(jobs, opt, prefix, spec, names, processes, progress)


def _resolve_classnames_file(spec, folders):
    if spec and spec != "imagenet" and spec.endswith(".json") and os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict) and all(k in data for k in folders):  # {"n01440764": "tench", ...}
            return [str(data[k]) for k in folders]
    return _resolve_classnames(spec, folders)


def read_caption_table(path: str, image_col: Optional[str] = None, caption_col: Optional[str] = None,
                       sep: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """CSV / TSV / parquet (by extension) -> (image paths, captions). Columns are guessed when not given."""
    if not os.path.isfile(path):
        raise ShardError(f"caption table {path} does not exist")
    try:
        import pandas as pd
    except ImportError:
        raise ShardError("reading a caption table needs pandas: run `pip install pandas`") from None
    low = path.lower()
    if low.endswith(".parquet") or low.endswith(".pq"):
        try:
            df = pd.read_parquet(path)
        except ImportError as e:
            raise ShardError(f"reading {path} needs a parquet engine: run `pip install pyarrow` ({e})") from None
    else:
        if sep is None:
            sep = "\t" if low.endswith((".tsv", ".tsv.gz", ".tab")) else ","
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    cols = list(df.columns)

    def pick(given, candidates, what, flag):
        if given:
            if given not in cols:
                raise ShardError(f"{path} has no column {given!r} ({flag}); its columns are {cols}")
            return given
        for c in candidates:
            for col in cols:
                if col.lower() == c:
                    return col
        raise ShardError(f"cannot tell which column of {path} holds the {what}; pass {flag} (columns: {cols})")

    ic = pick(image_col, ("filepath", "image", "image_path", "path", "file", "filename", "img", "url"),
              "image paths", "--image-col")
    cc = pick(caption_col, ("caption", "title", "text", "txt", "captions", "sentence"), "captions", "--caption-col")
    return [str(x) for x in df[ic].tolist()], [str(x) for x in df[cc].tolist()]


def write_caption_shards(table: str, out_dir: str, *, image_col: Optional[str] = None,
                         caption_col: Optional[str] = None, image_root: Optional[str] = None,
                         sep: Optional[str] = None, prefix: str = "shard", shard_size: int = 1000,
                         processes: int = 1, image_format: str = "keep", quality: int = 95,
                         resize: Optional[int] = None, shuffle: bool = True, seed: int = 0, verify: bool = True,
                         strict: bool = False, resume: bool = False, overwrite: bool = False,
                         progress: bool = True) -> ShardSet:
    """A table of (image path, caption) -> shards with `txt`. Relative paths are taken from image_root
    (default: the table's directory)."""
    _check_common(image_format, processes, prefix)
    table = os.path.abspath(table)
    paths, caps = read_caption_table(table, image_col, caption_col, sep)
    if not paths:
        raise ShardError(f"caption table {table} has no rows")
    root = os.path.abspath(image_root) if image_root else os.path.dirname(table)
    if any(p.startswith(("http://", "https://")) for p in paths[:100]):
        raise ShardError(f"{table} lists URLs; make_shards reads local files only (download them first, e.g. "
                         f"with img2dataset, or give a table of local paths)")
    paths = [p if os.path.isabs(p) else os.path.join(root, p) for p in paths]
    with open(table, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    out_dir = os.path.abspath(out_dir)
    spec = {"source": "captions", "table": table, "table_sha256": digest, "image_root": root, "n": len(paths),
            "prefix": prefix, "shard_size": shard_size, "image_format": image_format, "quality": quality,
            "resize": resize, "shuffle": shuffle, "seed": seed}
    existing = _prepare_output(out_dir, prefix, spec, resume, overwrite)
    if existing is not None:
        return existing
    jobs = [_Job(index=s, name=shard_name(prefix, s), keys=[f"{i:09d}" for i in idx],
                 paths=[paths[i] for i in idx], captions=[caps[i] for i in idx])
            for s, idx in enumerate(_plan(len(paths), shard_size, shuffle, seed))]
    opt = _Options(out_dir, image_format, quality, resize, verify, strict)
    return _write(jobs, opt, prefix, spec, None, processes, progress)


def load_npz(path: str, images_key: str = "images", labels_key: str = "labels", captions_key: str = "captions"):
    if not os.path.isfile(path):
        raise ShardError(f"array file {path} does not exist")
    try:
        z = np.load(path, allow_pickle=False)
        keys = list(z.keys())
    except (ValueError, OSError, AttributeError):  # not an .npz (np.load of an .npy gives an array: no keys)
        raise ShardError(f"{path} is not a NumPy .npz archive; write one with numpy.savez(path, images=..., "
                         "labels=...)") from None
    if images_key not in keys:
        raise ShardError(f"{path} has no array {images_key!r} (--images-key); it has {keys}")
    labels = z[labels_key] if labels_key in keys else None
    captions = [str(c) for c in z[captions_key]] if captions_key in keys else None
    classnames = [str(c) for c in z["classnames"]] if "classnames" in keys else None
    if labels is None and captions is None:
        raise ShardError(f"{path} has neither {labels_key!r} nor {captions_key!r}; it has {keys}")
    return z[images_key], labels, captions, classnames


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------

def _add_common(p: argparse.ArgumentParser, default_format: str, default_shuffle: bool) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--output", "-o", required=True, help="directory for the shards (created; must be empty "
                   "unless --resume / --overwrite)")
    g.add_argument("--prefix", default="shard", help="shard file prefix: <prefix>-000000.tar (default: shard)")
    g.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default: 1000)")
    g.add_argument("--processes", "-j", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                   help="worker processes, one shard each at a time (default: min(8, CPUs))")
    g.add_argument("--image-format", default=default_format, choices=["keep", "png", "jpg", "webp"],
                   help=f"how images are stored; keep = the source file's bytes where possible "
                        f"(default: {default_format})")
    g.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default: 95)")
    g.add_argument("--shuffle", dest="shuffle", action="store_true", default=default_shuffle,
                   help=f"shuffle the sample order before sharding (default: {'on' if default_shuffle else 'off'})")
    g.add_argument("--no-shuffle", dest="shuffle", action="store_false", help="keep the source order")
    g.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default: 0)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run into the same --output")
    g.add_argument("--overwrite", action="store_true", help="replace shards already in --output")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _add_files(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resize", type=int, default=None, metavar="N",
                   help="downscale so the shorter side is at most N pixels (re-encodes)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not check that each image decodes (faster with --image-format keep)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m open_clip_dive.tools.make_shards", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="source", required=True, metavar="{imagefolder,captions,arrays}")

    p = sub.add_parser("imagefolder", help="class-labelled images in root/<class>/<image> (the ImageNet train layout)")
    p.add_argument("root", help="the ImageFolder root (its sub-directories are the classes, sorted)")
    p.add_argument("--classnames", default=None,
                   help="names for classnames.json instead of the folder names: 'imagenet' (open_clip's 1000 "
                        "names, for WNID folders), or a file: JSON list, JSON {folder: name}, one name a line")
    _add_files(p)
    _add_common(p, "keep", True)

    p = sub.add_parser("captions", help="a CSV / TSV / parquet table of image path + caption")
    p.add_argument("table", help="the table (.csv, .tsv, .parquet)")
    p.add_argument("--image-col", default=None, help="column of image paths (default: guessed: filepath, image, path, ...)")
    p.add_argument("--caption-col", default=None, help="column of captions (default: guessed: caption, title, text, ...)")
    p.add_argument("--image-root", default=None, help="directory that relative paths start from (default: the table's)")
    p.add_argument("--sep", default=None, help="field separator (default: tab for .tsv, comma otherwise)")
    _add_files(p)
    _add_common(p, "keep", True)

    p = sub.add_parser("arrays", help="an .npz holding images (N x H x W [x C]) with labels and/or captions")
    p.add_argument("npz", help="the .npz file")
    p.add_argument("--images-key", default="images", help="array of images (default: images)")
    p.add_argument("--labels-key", default="labels", help="array of integer labels (default: labels)")
    p.add_argument("--captions-key", default="captions", help="array of caption strings (default: captions)")
    p.add_argument("--classnames", default=None,
                   help="class-name file (JSON list or one name a line); default: the npz's 'classnames' array")
    _add_common(p, "png", False)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.time()
    common = dict(prefix=args.prefix, shard_size=args.shard_size, processes=args.processes,
                  image_format=args.image_format, quality=args.quality, shuffle=args.shuffle, seed=args.seed,
                  resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    try:
        if args.source == "imagefolder":
            res = write_imagefolder_shards(args.root, args.output, classnames=args.classnames, resize=args.resize,
                                           verify=args.verify, strict=args.strict, **common)
        elif args.source == "captions":
            res = write_caption_shards(args.table, args.output, image_col=args.image_col,
                                       caption_col=args.caption_col, image_root=args.image_root, sep=args.sep,
                                       resize=args.resize, verify=args.verify, strict=args.strict, **common)
        else:
            images, labels, captions, classnames = load_npz(args.npz, args.images_key, args.labels_key,
                                                            args.captions_key)
            if args.classnames:
                from ..prompts import load_classnames

                classnames = load_classnames(args.classnames, flag="--classnames")
            if labels is not None and classnames is None:
                classnames = [str(i) for i in range(int(np.max(labels)) + 1)]
            res = write_array_shards(images, labels, classnames, args.output, captions=captions,
                                     source=f"arrays:{os.path.abspath(args.npz)}", **common)
    except DiveUsageError as e:
        print(f"make_shards: error: {e}", file=sys.stderr)
        return 2
    print(f"make_shards: {res.num_samples} samples in {res.num_shards} shard(s) in {res.directory} "
          f"({time.time() - t0:.1f} s){'; skipped %d' % res.skipped if res.skipped else ''}", file=sys.stderr)
    print(res.pattern)
    return 0


if __name__ == "__main__":
    sys.exit(main())
