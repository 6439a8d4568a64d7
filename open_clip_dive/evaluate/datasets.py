"""Turn a DatasetSpec into class names, templates, a logit projection and a loader, or one clear DatasetError.

Sources: the project's WebDataset shards (`cls` + an image; `classnames.json` / `sizes.json` beside them),
ImageFolder trees (with ImageNet-family label conventions), and CLIP_benchmark's builders over data that is
already on disk (download is never attempted).
"""

import dataclasses
import glob
import json
import logging
import os
import re
import warnings
from functools import lru_cache
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from ..errors import DiveUsageError
from ..prompts import load_classnames, load_templates
from .suites import DatasetError, DatasetSpec, SuiteError

log = logging.getLogger("open_clip_dive.evaluate")
CLIP_BENCHMARK_INSTALL = "requests && pip install --no-deps clip-benchmark==1.6.2"  # --no-deps: see docs/evaluating.md
WHOLE_DATASET = "all (no train/test split)"  # what CLIP_benchmark reads for caltech101, sun397 and eurosat

Template = Callable[[str], str]
CLASSLISTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "classlists")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
WNID = re.compile(r"^n\d{8}$")

# CLIP's UCF101 prompt set (openai/CLIP data/prompts.md): {photo, video, example, demonstration} of
# {a, the} person {'', using, doing, during, performing, practicing} <action>.
UCF101_TEMPLATES = [f"a {noun} of {art} person {verb}{{}}." for verb in ("", "using ", "doing ", "during ", "performing ", "practicing ")
                    for art in ("a", "the") for noun in ("photo", "video", "example", "demonstration")]
BUILTIN_TEMPLATE_LISTS = {"ucf101": UCF101_TEMPLATES}


# ------------------------------------------------------------------------------------------ class lists
@lru_cache(maxsize=None)
def imagenet_wnids() -> Tuple[str, ...]:
    with open(os.path.join(CLASSLISTS, "imagenet_wnids.txt")) as f:
        return tuple(line.strip() for line in f if line.strip())


@lru_cache(maxsize=None)
def imagenet_subset(name: str) -> Tuple[int, ...]:
    """Head indices of the 200 ImageNet-R / ImageNet-A classes (positions of their wnids in the 1000)."""
    path = os.path.join(CLASSLISTS, f"{name.replace('-', '_')}_wnids.txt")
    if not os.path.isfile(path):
        raise DiveUsageError(f"unknown class subset '{name}'; built-in: imagenet-r, imagenet-a (or a list of indices)")
    with open(path) as f:
        wanted = {line.strip() for line in f if line.strip()}
    return tuple(i for i, w in enumerate(imagenet_wnids()) if w in wanted)


def objectnet_mapping(mappings_dir: str, num_head: int = 1000) -> Dict[str, List[int]]:
    """{ObjectNet folder: [ImageNet head indices]} for the 113 mapped classes, from the four files that ship in
    objectnet-1.0/mappings/ (line i of imagenet_to_label_2012_v2 is ILSVRC-2012 id i; pytorch_to_imagenet_2012_id
    maps the sorted-wnid index to that id)."""
    files = ["folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json", "pytorch_to_imagenet_2012_id.json",
             "imagenet_to_label_2012_v2"]
    missing = [f for f in files if not os.path.isfile(os.path.join(mappings_dir, f))]
    if missing:
        raise DatasetError(f"ObjectNet mappings folder '{mappings_dir}' lacks {missing}; it ships in objectnet-1.0.zip "
                           f"as objectnet-1.0/mappings/")
    read = lambda f: json.load(open(os.path.join(mappings_dir, f), encoding="utf-8"))  # noqa: E731
    folder_to_label = read(files[0])
    label_to_imagenet = read(files[1])
    torch_to_2012 = {int(v): int(k) for k, v in read(files[2]).items()}
    with open(os.path.join(mappings_dir, files[3]), encoding="utf-8") as f:
        name_to_torch = {line.strip(): torch_to_2012[i] for i, line in enumerate(f) if line.strip()}
    mapping = {}
    for folder, label in folder_to_label.items():
        if label not in label_to_imagenet:
            continue  # ObjectNet classes without an ImageNet counterpart are not scored (313 -> 113)
        indices = []
        for name in label_to_imagenet[label].split("; "):
            if name.strip() not in name_to_torch:
                raise DatasetError(f"ObjectNet mapping names ImageNet class '{name}' that is not in {files[3]}")
            indices.append(name_to_torch[name.strip()])
        if max(indices) >= num_head:
            raise DatasetError(f"ObjectNet mapping points past the {num_head}-class head")
        mapping[folder] = sorted(set(indices))
    return mapping


def pretty_folder_name(name: str) -> str:
    """'Apply_Eye_Makeup' / 'ApplyEyeMakeup' / 'apply-eye-makeup' -> 'Apply Eye Makeup'."""
    name = re.sub(r"[_\-]+", " ", name)
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    return " ".join(name.split())


def resolve_templates(spec_templates, default) -> Tuple[List[Template], str]:
    """Templates and a short description for results.json."""
    value = spec_templates if spec_templates is not None else default
    if isinstance(value, str) and value in BUILTIN_TEMPLATE_LISTS:
        value, desc = BUILTIN_TEMPLATE_LISTS[value], value
    elif isinstance(value, str):
        templates = load_templates(value, flag="templates")
        return templates, f"{value} ({len(templates)})"
    else:
        desc = "inline"
    if not value or not all(isinstance(t, str) for t in value):
        raise DiveUsageError(f"templates must be a name, a file, or a non-empty list of strings (got {value!r})")
    templates = []
    for t in value:
        if "{c}" not in t and "{}" not in t:
            raise DiveUsageError(f"template {t!r} has no '{{}}' or '{{c}}' placeholder for the class name")
        templates.append(lambda c, t=t: t.replace("{c}", c).replace("{}", c))
    return templates, f"{desc} ({len(templates)})"


# ------------------------------------------------------------------------------------------ sources
class _FileDataset(torch.utils.data.Dataset):
    """(path, label) list -> (image tensor, label, None)."""

    def __init__(self, items, transform, crop_border=0):
        self.items, self.transform, self.crop_border = items, transform, crop_border

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        with Image.open(path) as im:
            im = im.convert("RGB")
        if self.crop_border:  # ObjectNet images carry a border (WiSE-FT crops 2 px per side)
            b = self.crop_border
            im = im.crop((b, b, im.width - b, im.height - b))
        return self.transform(im), label, None


class _WrappedDataset(torch.utils.data.Dataset):
    """A map-style dataset yielding (PIL image, label), e.g. CLIP_benchmark's, with our transform applied."""

    def __init__(self, ds, transform, indices=None):
        self.ds, self.transform = ds, transform
        self.indices = list(range(len(ds))) if indices is None else list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        image, label = self.ds[self.indices[i]]
        return self.transform(image.convert("RGB")), int(label), None


def _collate(batch):
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([int(b[1]) for b in batch], dtype=torch.long)
    return images, labels, [b[2] for b in batch]


def strided_indices(n: int, k: Optional[int]) -> List[int]:
    """k indices spread evenly over n (a prefix of a class-sorted folder would hold only the first classes)."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))


def expand_shards(path: str) -> List[str]:
    import braceexpand

    if os.path.isdir(path):
        urls = sorted(glob.glob(os.path.join(path, "*.tar")))
    else:
        urls = [u for part in path.split("::") for u in braceexpand.braceexpand(part)]
    return urls


@dataclasses.dataclass
class PreparedDataset:
    spec: DatasetSpec
    kind: str                          # wds | imagefolder | clip_benchmark
    head_classnames: List[str]         # one head column each
    classnames: List[str]              # the dataset's classes (after subset / map)
    templates: List[Template]
    templates_desc: str
    groups: Optional[List[List[int]]]  # dataset class -> head columns; None = identity
    num_samples: Optional[int]
    details: Dict[str, object]
    _items: Optional[list] = None
    _urls: Optional[List[str]] = None
    _cb: Optional[object] = None

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> Dict[str, object]:
        path = self.spec.path if "://" in self.spec.path else os.path.abspath(self.spec.path)
        return {"group": self.spec.group, "type": self.kind, "path": path, "classes": len(self.classnames),
                "head_classes": len(self.head_classnames), "templates": self.templates_desc,
                "primary": self.spec.primary, "projection": self.details.get("projection", "identity"),
                "max_samples": self.spec.max_samples, **{k: v for k, v in self.details.items() if k != "projection"}}

    def batches(self, transform, batch_size: int = 256, workers: int = 0,
                limit: Optional[int] = None) -> Iterator[Tuple[torch.Tensor, torch.Tensor, list]]:
        """(images, labels, texts-or-None) batches; `limit` (or spec.max_samples) caps the samples."""
        limit = limit if limit is not None else self.spec.max_samples
        if self.kind == "wds":
            ds = self._wds(transform)
            workers = min(workers, len(self._urls))
        elif self.kind == "imagefolder":
            items = [self._items[i] for i in strided_indices(len(self._items), limit)]
            ds = _FileDataset(items, transform, self.spec.crop_border)
        else:
            ds = _WrappedDataset(self._cb, transform, strided_indices(len(self._cb), limit))
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False,
                                             collate_fn=_collate)
        seen = 0
        for images, labels, texts in loader:
            if limit is not None and seen + len(labels) > limit:  # webdataset: the first `limit` in loader order
                keep = limit - seen
                images, labels, texts = images[:keep], labels[:keep], texts[:keep]
            seen += len(labels)
            if len(labels):
                yield images, labels, texts
            if limit is not None and seen >= limit:
                break

    def _wds(self, transform):
        import webdataset as wds

        # evaluation runs on one process: no node splitting; shards are split over loader workers, in order
        return (wds.WebDataset(self._urls, shardshuffle=False, nodesplitter=_no_node_split)
                .decode("pil").map(_ShardSample(self.name, transform)))


def _no_node_split(src, group=None):
    yield from src


class _ShardSample:
    """Decoded shard sample -> (image tensor, label, caption or None). A class, not a closure: picklable."""

    def __init__(self, name, transform):
        self.name, self.transform = name, transform

    def __call__(self, sample):
        image = next((sample[k] for k in ("jpg", "jpeg", "png", "webp") if k in sample), None)
        if image is None or "cls" not in sample:
            raise DatasetError(f"dataset '{self.name}': sample '{sample.get('__key__')}' in {sample.get('__url__')} "
                               f"lacks an image (jpg/jpeg/png/webp) or a 'cls' field")
        return self.transform(image.convert("RGB")), int(sample["cls"]), sample.get("txt")


def _folders(root: str) -> List[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def _images_under(folder: str) -> List[str]:
    out = []
    for dirpath, dirnames, files in os.walk(folder):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTS))
    return out


def _head_classnames(spec: DatasetSpec, fallback: Optional[List[str]], where: str) -> List[str]:
    if isinstance(spec.classnames, list):
        names = [str(c) for c in spec.classnames]
    elif isinstance(spec.classnames, str):
        try:
            names = load_classnames(spec.classnames, flag=f"dataset '{spec.name}' classnames")
        except DiveUsageError as e:
            raise DatasetError(str(e)) from None
    elif fallback is not None:
        names = fallback
    else:
        raise DatasetError(f"dataset '{spec.name}': no class names for {where}; put classnames.json next to the data "
                           f"or set `classnames` in the suite file")
    if not names:
        raise DatasetError(f"dataset '{spec.name}': the class list is empty")
    return names


def _json_file(path: str, what: str, spec: DatasetSpec):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(f"dataset '{spec.name}': {what} file '{path}' could not be read as JSON ({e})") from None


def _subset(spec: DatasetSpec) -> Optional[List[int]]:
    if spec.class_subset is None:
        return None
    if isinstance(spec.class_subset, str):
        if os.path.isfile(spec.class_subset):
            return [int(x) for x in _json_file(spec.class_subset, "class_subset", spec)]
        try:
            return list(imagenet_subset(spec.class_subset))
        except DiveUsageError as e:
            raise DatasetError(f"dataset '{spec.name}': {e}") from None
    return [int(x) for x in spec.class_subset]


def prepare(spec: DatasetSpec, default_templates="openai") -> PreparedDataset:
    """Validate one spec against the data on disk. Raises DatasetError with a one-line fix."""
    if not spec.path:
        raise DatasetError(f"dataset '{spec.name}': no path given; pass --data-path {spec.name}=DIR or list it in "
                           f"--data-paths FILE" + (f" ({spec.source})" if spec.source else ""))
    kind = spec.type
    if kind == "auto":
        kind = _detect_type(spec)
    build = {"wds": _prepare_wds, "imagefolder": _prepare_imagefolder}.get(kind, _prepare_clip_benchmark)
    ds = build(spec, default_templates)
    if spec.primary == "top5" and len(ds.classnames) <= 5:
        raise SuiteError(f"dataset '{spec.name}': primary top5 needs more than 5 classes (it has "
                         f"{len(ds.classnames)}, so top-5 would be 100% by construction); use primary: top1 or macro_f1")
    return ds


def _detect_type(spec: DatasetSpec) -> str:
    path = spec.path
    if os.path.isdir(path):
        if glob.glob(os.path.join(path, "*.tar")):
            return "wds"
        if _folders(path):
            return "imagefolder"
        raise DatasetError(f"dataset '{spec.name}': '{path}' holds neither .tar shards nor class folders (empty dataset?)")
    if ".tar" in path:
        return "wds"
    raise DatasetError(f"dataset '{spec.name}': path '{path}' does not exist")


def _prepare_wds(spec: DatasetSpec, default_templates) -> PreparedDataset:
    urls = expand_shards(spec.path)
    if not urls:
        raise DatasetError(f"dataset '{spec.name}': no .tar shards at '{spec.path}' (empty dataset?)")
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not os.path.isfile(u)]
    if missing:
        raise DatasetError(f"dataset '{spec.name}': shard '{missing[0]}' does not exist"
                           + (f" ({len(missing)} of {len(urls)} missing)" if len(missing) > 1 else ""))
    folder = os.path.dirname(local[0]) if local else None
    found = None
    if folder and os.path.isfile(os.path.join(folder, "classnames.json")):
        found = load_classnames(os.path.join(folder, "classnames.json"))
    head = _head_classnames(spec, found, f"shards '{spec.path}'")
    num_samples = None
    if folder and os.path.isfile(os.path.join(folder, "sizes.json")):
        sizes = json.load(open(os.path.join(folder, "sizes.json")))
        counts = [sizes.get(os.path.basename(u)) for u in urls]
        num_samples = sum(counts) if all(c is not None for c in counts) else None
        if num_samples == 0:
            raise DatasetError(f"dataset '{spec.name}': sizes.json says the shards at '{spec.path}' hold no samples")
    subset = _subset(spec)
    if spec.class_map is not None:
        raise DatasetError(f"dataset '{spec.name}': class_map needs an ImageFolder layout (class folders)")
    if subset and max(subset) >= len(head):
        raise DatasetError(f"dataset '{spec.name}': class_subset points past the {len(head)} class names")
    groups = [[i] for i in subset] if subset else None
    classnames = [head[i] for i in subset] if subset else head
    templates, desc = resolve_templates(spec.templates, default_templates)
    if spec.max_samples is not None and num_samples is not None:
        num_samples = min(num_samples, spec.max_samples)
    return PreparedDataset(spec, "wds", head, classnames, templates, desc, groups, num_samples,
                           {"shards": len(urls), "projection": f"subset of {len(subset)}" if subset else "identity"},
                           _urls=urls)


def _prepare_imagefolder(spec: DatasetSpec, default_templates) -> PreparedDataset:
    root = spec.path
    map_dir = None
    if spec.class_map == "objectnet":  # accept the zip's top folder, its parent, or images/ itself
        for base in (root, os.path.join(root, "objectnet-1.0"), os.path.dirname(root.rstrip("/"))):
            if os.path.isdir(os.path.join(base, "mappings")):
                map_dir = os.path.join(base, "mappings")
                if os.path.isdir(os.path.join(base, "images")):
                    root = os.path.join(base, "images")
                break
    if not os.path.isdir(root):
        raise DatasetError(f"dataset '{spec.name}': path '{root}' does not exist or is not a directory"
                           + (f" ({spec.source})" if spec.source else ""))
    folders = _folders(root)
    if not folders:
        raise DatasetError(f"dataset '{spec.name}': '{root}' has no class folders (empty dataset?)")
    mode = spec.labels
    if mode == "auto":
        if all(WNID.match(f) for f in folders):
            mode = "wnid"
        elif all(f.isdigit() for f in folders):
            mode = "int"
        else:
            mode = "folder-index"
    details: Dict[str, object] = {"labels": mode}
    groups = None
    skipped = 0

    if spec.class_map is not None:
        if spec.class_map == "objectnet":
            if map_dir is None:
                raise DatasetError(f"dataset '{spec.name}': no mappings/ folder found next to '{spec.path}'; point the path "
                                   f"at objectnet-1.0 (holding images/ and mappings/)")
            head = _head_classnames(spec, None, root)
            mapping = objectnet_mapping(map_dir, len(head))
            label_names = json.load(open(os.path.join(map_dir, "folder_to_objectnet_label.json")))
        else:
            mapping = spec.class_map if isinstance(spec.class_map, dict) else _json_file(spec.class_map, "class_map", spec)
            head = _head_classnames(spec, None, root)
            label_names = {}
        mapped = [f for f in folders if f in mapping]
        if not mapped:
            raise DatasetError(f"dataset '{spec.name}': none of the {len(folders)} folders in '{root}' is in the class map")
        skipped = len(folders) - len(mapped)
        groups = [list(mapping[f]) for f in mapped]
        classnames = [label_names.get(f, pretty_folder_name(f)).lower() if label_names else pretty_folder_name(f)
                      for f in mapped]
        label_of = {f: i for i, f in enumerate(mapped)}
        details.update(projection=f"max over mapped head classes ({len(mapped)} classes)", skipped_folders=skipped)
    elif mode in ("wnid", "int"):
        head = _head_classnames(spec, None, root)
        wnids = imagenet_wnids()
        if mode == "wnid":
            if len(head) != len(wnids):
                raise DatasetError(f"dataset '{spec.name}': wnid folders need the 1000 ImageNet class names, "
                                   f"the class list has {len(head)}")
            index = {w: i for i, w in enumerate(wnids)}
            bad = [f for f in folders if f not in index]
            if bad:
                raise DatasetError(f"dataset '{spec.name}': folder '{bad[0]}' in '{root}' is not an ImageNet wnid "
                                   f"({len(bad)} such); use labels: folder-index with your own class list")
            raw = {f: index[f] for f in folders}
        else:
            bad = [f for f in folders if not f.isdigit() or int(f) >= len(head)]
            if bad:
                raise DatasetError(f"dataset '{spec.name}': folder '{bad[0]}' in '{root}' is not a class index below "
                                   f"{len(head)} (labels: int; the class list has {len(head)} names)")
            raw = {f: int(f) for f in folders}  # int(), not sorted order: '10' sorts before '2'
        subset = _subset(spec)
        if subset:
            pos = {h: i for i, h in enumerate(subset)}
            outside = [f for f in folders if raw[f] not in pos]
            if outside:
                raise DatasetError(f"dataset '{spec.name}': folder '{outside[0]}' is not in the {len(subset)}-class subset "
                                   f"'{spec.class_subset}' ({len(outside)} such)")
            label_of = {f: pos[raw[f]] for f in folders}
            groups = [[h] for h in subset]
            classnames = [head[h] for h in subset]
            details["projection"] = f"subset of {len(subset)} head classes"
        else:
            label_of = raw
            classnames = head
    else:
        head = _head_classnames(spec, [pretty_folder_name(f) for f in folders], root)
        if len(head) != len(folders):
            where = spec.classnames if isinstance(spec.classnames, str) else "the inline list"
            raise DatasetError(f"dataset '{spec.name}': {len(folders)} class folders in '{root}' but the class list "
                               f"({where}) has {len(head)} names; they must match one to one (sorted folder order)")
        label_of = {f: i for i, f in enumerate(folders)}
        subset = _subset(spec)
        if subset:
            raise DatasetError(f"dataset '{spec.name}': class_subset needs labels: wnid or int")
        classnames = head

    items = [(p, label_of[f]) for f in folders if f in label_of for p in _images_under(os.path.join(root, f))]
    if not items:
        raise DatasetError(f"dataset '{spec.name}': no images ({', '.join(IMAGE_EXTS)}) under '{root}' (empty dataset?)")
    templates, desc = resolve_templates(spec.templates, default_templates)
    n = len(items) if spec.max_samples is None else min(len(items), spec.max_samples)
    return PreparedDataset(spec, "imagefolder", head, classnames, templates, desc, groups, n, details, _items=items)


def _prepare_clip_benchmark(spec: DatasetSpec, default_templates) -> PreparedDataset:
    name = spec.cb_name or spec.name
    if not os.path.exists(spec.path):
        # checked here: CLIP_benchmark would try to download into a missing root
        raise DatasetError(f"dataset '{spec.name}': path '{spec.path}' does not exist (CLIP_benchmark '{name}' root; "
                           f"{spec.source or 'see docs/evaluating.md'})")
    try:
        from clip_benchmark.datasets.builder import build_dataset
    except ImportError as e:
        missing = (getattr(e, "name", None) or "clip_benchmark").split(".")[0]
        raise DatasetError(f"dataset '{spec.name}' needs CLIP_benchmark: " + (
            f"pip install {CLIP_BENCHMARK_INSTALL}" if missing == "clip_benchmark" else
            f"its dependency {missing} is missing: pip install {missing}")) from None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = build_dataset(name, root=spec.path, transform=None, split=spec.split, download=False)
    except Exception as e:  # torchvision: "Dataset not found or corrupted", asserts on split names, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"dataset '{spec.name}': CLIP_benchmark could not read '{name}' (split {spec.split}) at "
                           f"'{spec.path}': {msg}") from None
    if len(ds) == 0:
        raise DatasetError(f"dataset '{spec.name}': CLIP_benchmark found no samples at '{spec.path}' (empty dataset?)")
    head = _head_classnames(spec, list(ds.classes), spec.path)
    cb_templates = list(getattr(ds, "templates", None) or [])
    if spec.templates is None and cb_templates and all(isinstance(t, str) for t in cb_templates):
        templates, desc = resolve_templates(cb_templates, default_templates)
        desc = f"clip_benchmark:{name} ({len(templates)})"
    else:
        templates, desc = resolve_templates(spec.templates, default_templates)
    subset = _subset(spec)
    if subset and max(subset) >= len(head):
        raise DatasetError(f"dataset '{spec.name}': class_subset points past the {len(head)} class names")
    groups = [[i] for i in subset] if subset else None
    classnames = [head[i] for i in subset] if subset else head
    n = len(ds) if spec.max_samples is None else min(len(ds), spec.max_samples)
    details = {"cb_name": name, "split": spec.split}
    for w in caught:  # never hidden: logged, and an ignored split is recorded as what was really read
        text = str(w.message).strip().splitlines()[0] if str(w.message).strip() else w.category.__name__
        if "split argument ignored" in text:
            details["split"] = WHOLE_DATASET
            log.warning(f"WARNING dataset '{spec.name}': CLIP_benchmark has no '{spec.split}' split for '{name}' "
                        f"and reads the whole dataset ({len(ds)} images); results record split '{WHOLE_DATASET}'")
        else:
            log.warning(f"WARNING dataset '{spec.name}': CLIP_benchmark: {text}")
    return PreparedDataset(spec, "clip_benchmark", head, classnames, templates, desc, groups, n, details, _cb=ds)
