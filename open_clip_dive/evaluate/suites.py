"""Dataset specs, the built-in presets and suites, and suite files (YAML/JSON).

A *spec* says where a dataset is and how to score it; nothing is read from disk here except suite/path files.
A *suite* is an ordered list of specs, each in one group: `id`, `ood` or `zeroshot` (averaged per group).
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Union

from ..errors import DiveUsageError
from ..optional import require

GROUPS = ("id", "ood", "zeroshot", "other")
TYPES = ("auto", "wds", "imagefolder", "clip_benchmark")
LABEL_MODES = ("auto", "folder-index", "wnid", "int")
PRIMARY = ("top1", "top5", "macro_f1")


class DatasetError(DiveUsageError):
    """A problem with one dataset of a suite: reported, the rest of the suite still runs."""


class SuiteError(DiveUsageError):
    """A suite that asks for something no data can give (top-5 of 5 classes): refused before anything runs."""


@dataclasses.dataclass
class DatasetSpec:
    """One dataset to evaluate. Fields left None take the preset's / the data's / the suite's defaults.

    - classnames: 'imagenet', a file (JSON list / one per line), an inline list, or None (from the data:
      `classnames.json` next to shards, folder names, or CLIP_benchmark's names).
    - templates: 'openai' | 'simple' | 'photo' | a file | an inline list of strings with '{}' / '{c}';
      None: CLIP_benchmark's templates for that dataset where it has them, else the suite default.
    - labels (ImageFolder): how folder names become labels; 'wnid' (ImageNet wnids -> index in the 1000),
      'int' (folder names are class indices, ImageNet-V2), 'folder-index' (sorted order), 'auto'.
    - class_subset: 'imagenet-r' | 'imagenet-a' | list of head indices: score only these columns of the head
      (WiSE-FT's 200-class convention); the dataset's labels are positions in this list.
    - class_map: 'objectnet' (read from the data's mappings/ folder) or a JSON file {folder: [head indices]}:
      each dataset class takes the max over its mapped head logits.
    - primary: the metric that enters the group average (top1; macro_f1 for iWildCam).
    """

    name: str
    group: str = "other"
    type: str = "auto"
    path: Optional[str] = None
    classnames: Union[None, str, List[str]] = None
    templates: Union[None, str, List[str]] = None
    labels: str = "auto"
    class_subset: Union[None, str, List[int]] = None
    class_map: Union[None, str, Dict[str, List[int]]] = None
    crop_border: int = 0
    primary: str = "top1"
    split: str = "test"
    cb_name: Optional[str] = None
    max_samples: Optional[int] = None
    source: str = ""  # where the data comes from, shown in docs / errors

    @classmethod
    def from_dict(cls, d: Dict[str, Any], where: str) -> "DatasetSpec":
        if not isinstance(d, dict) or "name" not in d:
            raise DiveUsageError(f"{where}: each dataset needs at least a 'name' (got {d!r})")
        d = dict(d)
        preset = d.pop("preset", None)
        if preset is not None and preset not in PRESETS:
            raise DiveUsageError(f"{where}: unknown preset '{preset}'; known: {', '.join(PRESETS)}")
        # a dataset named like a preset (e.g. imagenet-r) gets the preset's conventions unless it overrides them
        base = dict(PRESETS.get(preset or d["name"], {}))
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise DiveUsageError(f"{where}: dataset '{d['name']}' has unknown keys {unknown}; known: {sorted(fields)}")
        base.update(d)
        spec = cls(**base)
        spec.validate(where)
        return spec

    def validate(self, where: str = "suite") -> None:
        for value, allowed, key in ((self.group, GROUPS, "group"), (self.type, TYPES, "type"),
                                    (self.labels, LABEL_MODES, "labels"), (self.primary, PRIMARY, "primary")):
            if value not in allowed:
                raise DiveUsageError(f"{where}: dataset '{self.name}': {key} '{value}' is not one of {list(allowed)}")
        if self.class_subset is not None and self.class_map is not None:
            raise DiveUsageError(f"{where}: dataset '{self.name}': give class_subset or class_map, not both")


# ---------------------------------------------------------------------------------------------------------
# Presets: the conventions researchers get wrong by hand (paper.md section 2.3). `path` comes from the user.
NO_SPLIT = "; CLIP_benchmark has no test split: the whole dataset is evaluated"
IMAGENET_COMMON = dict(classnames="imagenet", templates="openai")
PRESETS: Dict[str, Dict[str, Any]] = {
    "imagenet": dict(group="id", type="imagefolder", labels="wnid", **IMAGENET_COMMON,
                     source="ILSVRC-2012 val, one folder per wnid (image-net.org; valprep.sh layout)"),
    "imagenet-v2": dict(group="ood", type="imagefolder", labels="int", **IMAGENET_COMMON,
                        source="ImageNetV2 matched-frequency: folders 0..999 are class indices"),
    "imagenet-r": dict(group="ood", type="imagefolder", labels="wnid", class_subset="imagenet-r", **IMAGENET_COMMON,
                       source="imagenet-r.tar (Hendrycks): 200 wnid folders, scored on the 200-class sub-head"),
    "imagenet-a": dict(group="ood", type="imagefolder", labels="wnid", class_subset="imagenet-a", **IMAGENET_COMMON,
                       source="imagenet-a.tar (Hendrycks): 200 wnid folders, scored on the 200-class sub-head"),
    "imagenet-sketch": dict(group="ood", type="imagefolder", labels="wnid", **IMAGENET_COMMON,
                            source="ImageNet-Sketch 'sketch/' folder: 1000 wnid folders"),
    "objectnet": dict(group="ood", type="imagefolder", labels="folder-index", class_map="objectnet",
                      crop_border=2, **IMAGENET_COMMON,
                      source="objectnet-1.0 (images/ + mappings/): 113 classes, max over mapped ImageNet logits"),
    # zero-shot transfer (CLIP_benchmark builders over data already on disk; download is never attempted)
    "caltech101": dict(group="zeroshot", type="clip_benchmark", cb_name="caltech101", source="torchvision Caltech101 layout" + NO_SPLIT),
    "flowers102": dict(group="zeroshot", type="clip_benchmark", cb_name="flowers", source="torchvision Flowers102 layout"),
    "food101": dict(group="zeroshot", type="clip_benchmark", cb_name="food101", source="torchvision Food101 layout"),
    "sun397": dict(group="zeroshot", type="clip_benchmark", cb_name="sun397", source="torchvision SUN397 layout" + NO_SPLIT),
    "dtd": dict(group="zeroshot", type="clip_benchmark", cb_name="dtd", source="torchvision DTD layout"),
    "fgvc-aircraft": dict(group="zeroshot", type="clip_benchmark", cb_name="fgvc_aircraft", source="torchvision FGVCAircraft layout"),
    "stanford-cars": dict(group="zeroshot", type="clip_benchmark", cb_name="cars", source="torchvision StanfordCars layout"),
    "oxford-pets": dict(group="zeroshot", type="clip_benchmark", cb_name="pets", split="test", source="torchvision OxfordIIITPet layout"),
    "eurosat": dict(group="zeroshot", type="clip_benchmark", cb_name="eurosat", source="torchvision EuroSAT layout" + NO_SPLIT),
    "ucf101": dict(group="zeroshot", type="imagefolder", labels="folder-index", templates="ucf101",
                   source="UCF101 middle frames, one folder per action (CoOp's UCF-101-midframes)"),
    # WILDS iWildCam: macro-F1 is the reported number (FLYP issue 12); data as shards or ImageFolder
    "iwildcam-id": dict(group="id", type="auto", primary="macro_f1", source="WILDS iWildCam id_test split"),
    "iwildcam-ood": dict(group="ood", type="auto", primary="macro_f1", source="WILDS iWildCam test split"),
}

SUITES: Dict[str, List[str]] = {
    "imagenet-ood": ["imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch", "objectnet"],
    "zeroshot-10": ["caltech101", "flowers102", "food101", "sun397", "dtd", "fgvc-aircraft", "stanford-cars",
                    "oxford-pets", "eurosat", "ucf101"],
    "iwildcam": ["iwildcam-id", "iwildcam-ood"],
}
SUITES["imagenet-full"] = SUITES["imagenet-ood"] + SUITES["zeroshot-10"]


def _read_structured(path: str, what: str) -> Any:
    if not os.path.isfile(path):
        raise DiveUsageError(f"{what} file '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    yaml = require("yaml", "pyyaml", f"{what} file '{path}'") if path.endswith((".yaml", ".yml")) else None
    try:
        return yaml.safe_load(text) if yaml else json.loads(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError: one line that names the file
        raise DiveUsageError(f"{what} file '{path}' could not be parsed: {str(e).splitlines()[0]}") from None


def load_paths_file(path: str) -> Dict[str, str]:
    """A YAML/JSON mapping {dataset name: path}, or a suite file whose `paths:` section is used."""
    data = _read_structured(path, "data-paths")
    if isinstance(data, dict) and "paths" in data:
        data = data["paths"]
    if not isinstance(data, dict):
        raise DiveUsageError(f"data-paths file '{path}' must map dataset names to paths")
    return {str(k): os.path.expanduser(str(v)) for k, v in data.items()}


def parse_data_path(arg: str) -> Dict[str, str]:
    """`--data-path NAME=PATH`."""
    name, sep, path = arg.partition("=")
    if not sep or not name or not path:
        raise DiveUsageError(f"--data-path '{arg}': expected NAME=PATH, e.g. imagenet-r=/data/imagenet-r")
    return {name: os.path.expanduser(path)}


def parse_dataset_arg(arg: str) -> DatasetSpec:
    """`--dataset [GROUP:]NAME=PATH`: a quick dataset without a suite file (type and class names from the data)."""
    head, sep, path = arg.partition("=")
    if not sep or not head or not path:
        raise DiveUsageError(f"--dataset '{arg}': expected [GROUP:]NAME=PATH, e.g. id:digits=/data/digits-test")
    group, _, name = head.rpartition(":")
    spec = DatasetSpec(name=name, group=group or "other", path=os.path.expanduser(path))
    if name in PRESETS:
        spec = DatasetSpec(**{**PRESETS[name], "name": name, "path": spec.path, **({"group": group} if group else {})})
    spec.validate(f"--dataset '{arg}'")
    return spec


def load_suite_file(path: str) -> List[DatasetSpec]:
    """Suite file: {suite: NAME|[NAMES], paths: {name: path}, defaults: {...}, datasets: [{name, ...}]}.

    `suite` starts from built-in suites; `paths` fills their paths; `datasets` adds (or, by name, overrides).
    `defaults` (e.g. templates, max_samples) apply to every dataset that does not set the key itself.
    """
    data = _read_structured(path, "suite")
    if isinstance(data, list):
        data = {"datasets": data}
    if not isinstance(data, dict):
        raise DiveUsageError(f"suite file '{path}' must hold a mapping or a list of datasets")
    unknown = sorted(set(data) - {"suite", "paths", "defaults", "datasets", "name"})
    if unknown:
        raise DiveUsageError(f"suite file '{path}': unknown keys {unknown}; use suite, paths, defaults, datasets")
    names = data.get("suite") or []
    names = [names] if isinstance(names, str) else list(names)
    here = os.path.dirname(os.path.abspath(path))

    def _abs(p):  # relative paths in a suite file are relative to the file
        p = os.path.expanduser(str(p))
        return p if os.path.isabs(p) or "://" in p else os.path.join(here, p)

    paths = {str(k): _abs(v) for k, v in (data.get("paths") or {}).items()}
    specs = builtin_suite(names, paths) if names else []
    for i, d in enumerate(data.get("datasets") or []):
        spec = DatasetSpec.from_dict(d, f"suite file '{path}', datasets[{i}]")
        spec.path = _abs(spec.path) if spec.path is not None else paths.get(spec.name)
        names = [s.name for s in specs]  # an entry named like a suite dataset replaces it in place
        specs = specs[:names.index(spec.name)] + [spec] + specs[names.index(spec.name) + 1:] if spec.name in names else specs + [spec]
    defaults = data.get("defaults") or {}
    bad = sorted(set(defaults) - {f.name for f in dataclasses.fields(DatasetSpec)} - {"name"})
    if bad:
        raise DiveUsageError(f"suite file '{path}': unknown keys in defaults: {bad}")
    for spec in specs:
        for key, value in defaults.items():
            if getattr(spec, key) == getattr(DatasetSpec(name="_"), key):
                setattr(spec, key, value)
    return specs


def builtin_suite(names: Sequence[str], paths: Dict[str, str]) -> List[DatasetSpec]:
    specs = []
    for name in names:
        if name not in SUITES:
            raise DiveUsageError(f"unknown suite '{name}'; built-in suites: {', '.join(SUITES)} (or give a YAML/JSON file)")
        for preset in SUITES[name]:
            specs.append(DatasetSpec(name=preset, **PRESETS[preset], path=paths.get(preset)))
    return specs


def resolve_suite(suites: Sequence[str], paths: Optional[Dict[str, str]] = None,
                  datasets: Sequence[str] = (), max_samples: Optional[int] = None) -> List[DatasetSpec]:
    """Suite names / files (comma lists allowed) + `--dataset` entries -> specs, in order, names unique."""
    paths = dict(paths or {})
    specs: List[DatasetSpec] = []
    for entry in suites:
        for item in [s for s in entry.split(",") if s]:
            new = load_suite_file(item) if os.path.splitext(item)[1] in (".yaml", ".yml", ".json") else builtin_suite([item], paths)
            for spec in new:
                if spec.path is None and spec.name in paths:
                    spec.path = paths[spec.name]
            specs.extend(new)
    specs.extend(parse_dataset_arg(d) for d in datasets)
    # a shared paths file may name datasets of other suites; a name that matches nothing is a typo
    unknown_paths = sorted(set(paths) - {s.name for s in specs} - set(PRESETS))
    if unknown_paths:
        import difflib

        hints = {n: difflib.get_close_matches(n, list(PRESETS) + [s.name for s in specs], 1) for n in unknown_paths}
        hint = "; ".join(f"'{n}'" + (f" (did you mean '{m[0]}'?)" if m else "") for n, m in hints.items())
        raise DiveUsageError(f"paths given for unknown datasets: {hint}; suite datasets: {[s.name for s in specs]}")
    seen = set()
    for spec in specs:
        if spec.name in seen:
            raise DiveUsageError(f"dataset '{spec.name}' appears twice in the suite; give each a distinct name")
        seen.add(spec.name)
        if max_samples is not None:
            spec.max_samples = max_samples
    if not specs:
        raise DiveUsageError("no datasets to evaluate: give --suite NAME|FILE or --dataset [GROUP:]NAME=PATH")
    return specs
