"""What a checkpoint was trained with, against the config it is about to be loaded into.

Two things load silently wrong, so they are read from where open_clip records them: an open_clip tag's
pretrained config, or the `params.txt` that open_clip's trainer writes into the run folder
(<logs>/<name>/params.txt beside <logs>/<name>/checkpoints/epoch_N.pt).

- The activation. A QuickGELU checkpoint (OpenAI's weights, or a run with --force-quick-gelu / a `-quickgelu`
  config) has the same keys as a GELU one, so it loads under the other config without an error and scores
  lower (open_clip issue 771). `check_activation` refuses the mismatch with one line.
- The image preprocessing (mean / std / interpolation / resize mode). open_clip applies a tag's only when
  `pretrained` *is* the tag; a fine-tuned `epoch_N.pt` of a SigLIP / DFN / ... model gets OpenAI's defaults.
  `trained_with(...).preprocess` follows a file's params.txt back to its tag.
"""

import ast
import dataclasses
import logging
import os
from typing import Dict, List, Optional, Tuple

from .errors import DiveUsageError

PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")  # what an open_clip tag sets
PREPROCESS_KWARGS = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
                     "resize_mode": "image_resize_mode"}  # create_model_and_transforms / open_clip's --image-* flags
_MAX_CHAIN = 8  # params.txt -> pretrained file -> its params.txt -> ... (guards against a cycle of copied folders)


@dataclasses.dataclass
class Trained:
    """What weights were trained with; None where nothing says."""

    quick_gelu: Optional[bool] = None
    preprocess: Optional[Dict[str, object]] = None
    model: Optional[str] = None  # the --model of the run, when a params.txt names it
    source: str = ""             # how we know, for messages


def read_params(path: str) -> Dict[str, object]:
    """open_clip's params.txt (`name: str(value)` per line) -> {name: value}, literals parsed."""
    values: Dict[str, object] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            key, sep, text = line.rstrip("\n").partition(": ")
            if not sep:
                continue
            try:
                values[key.strip()] = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                values[key.strip()] = text
    return values


def params_file(checkpoint: str) -> Optional[str]:
    """The params.txt of the run that saved `checkpoint` (its run folder, or beside the file), if any."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    candidates = [os.path.join(folder, "params.txt")]
    if os.path.basename(folder) == "checkpoints":
        candidates.insert(0, os.path.join(os.path.dirname(folder), "params.txt"))
    return next((p for p in candidates if os.path.isfile(p)), None)


def _has_schema(name: Optional[str]) -> bool:
    return bool(name) and str(name).startswith(("local-dir:", "hf-hub:"))


def tag_config(model_name: str, pretrained: Optional[str]) -> Dict[str, object]:
    """open_clip's pretrained config when `pretrained` is a tag of `model_name` (as create_model resolves it), else {}."""
    if not pretrained or _has_schema(model_name) or _has_schema(pretrained):
        return {}
    import open_clip

    return dict(open_clip.get_pretrained_cfg(model_name.replace("/", "-"), pretrained) or {})


def config_quick_gelu(model_name: Optional[str], force_quick_gelu: bool = False) -> Optional[bool]:
    """Whether `model_name` (+ --force-quick-gelu) builds QuickGELU; None for a model open_clip does not know here."""
    if force_quick_gelu:
        return True
    if not model_name or _has_schema(model_name):
        return None
    import open_clip

    cfg = open_clip.get_model_config(str(model_name).replace("/", "-"))
    return None if cfg is None else bool(cfg.get("quick_gelu", False))


def trained_with(pretrained: Optional[str], model_name: Optional[str], _depth: int = 0) -> Trained:
    """What `pretrained` (an open_clip tag of `model_name`, or a checkpoint file) was trained with."""
    if not pretrained or _depth > _MAX_CHAIN or _has_schema(pretrained) or _has_schema(model_name):
        return Trained()
    cfg = tag_config(model_name, pretrained) if model_name else {}
    if cfg:
        return Trained(bool(cfg.get("quick_gelu", False)), {k: cfg[k] for k in PREPROCESS_KEYS if k in cfg},
                       model_name, f"open_clip tag '{pretrained}' of {model_name}")
    if not os.path.isfile(pretrained):
        return Trained()
    path = params_file(pretrained)
    if path is None:
        return Trained(source="no params.txt in its run folder")
    params = read_params(path)
    model = params.get("model") if isinstance(params.get("model"), str) else None
    forced = params.get("force_quick_gelu") is True
    # the weights it started from fix the preprocessing, unless the run set --image-mean / ... itself
    parent = trained_with(params.get("pretrained") if isinstance(params.get("pretrained"), str) else None,
                          model, _depth + 1)
    preprocess = dict(parent.preprocess or {})
    for key, flag in PREPROCESS_KWARGS.items():
        if params.get(flag) is not None:
            value = params[flag]
            preprocess[key] = tuple(value) if isinstance(value, list) else value
    source = f"{path}: --model {model}" + (" --force-quick-gelu" if forced else "")
    if parent.source and parent.preprocess:
        source += f", from {parent.source}"
    return Trained(config_quick_gelu(model, forced), preprocess or None, model, source)


def _activation(quick_gelu: bool) -> str:
    return "QuickGELU" if quick_gelu else "GELU"


def _fix(trained: Trained, model_name: str, force_quick_gelu: bool, force_flag: str) -> str:
    import open_clip

    known = set(open_clip.list_models())
    if trained.model and trained.model != model_name and config_quick_gelu(trained.model) == trained.quick_gelu:
        return f"use --model {trained.model}"
    if trained.quick_gelu:
        return (f"use --model {model_name}-quickgelu" if f"{model_name}-quickgelu" in known
                else f"add {force_flag}")
    if force_quick_gelu:
        return f"drop {force_flag}"
    base = model_name[:-len("-quickgelu")] if model_name.endswith("-quickgelu") else None
    return f"use --model {base}" if base in known else "use a model config without quick_gelu"


def check_activation(what: str, pretrained: Optional[str], model_name: str, force_quick_gelu: bool = False,
                     force_flag: str = "--force-quick-gelu") -> Trained:
    """Raise DiveUsageError (one line) when `pretrained` was trained with another activation than
    `model_name` (+ force) builds; returns what it was trained with. Unknown either side: nothing to compare."""
    trained = trained_with(pretrained, model_name)
    target = config_quick_gelu(model_name, force_quick_gelu)
    if trained.quick_gelu is None or target is None or trained.quick_gelu == target:
        return trained
    built = f"--model {model_name}" + (f" {force_flag}" if force_quick_gelu else "")
    raise DiveUsageError(
        f"{what} '{pretrained}' was trained with {_activation(trained.quick_gelu)} ({trained.source}) but {built} "
        f"builds {_activation(target)}: the weights would load without an error and score wrong; "
        f"{_fix(trained, model_name, force_quick_gelu, force_flag)}")


def describe(preprocess: Optional[Dict[str, object]]) -> str:
    if not preprocess:
        return "open_clip's defaults for the model"
    return ", ".join(f"{k}={preprocess[k]}" for k in PREPROCESS_KEYS if k in preprocess)


def preprocess_kwargs(preprocess: Optional[Dict[str, object]]) -> Dict[str, object]:
    """create_model_and_transforms keyword arguments (image_mean, ...) for a preprocessing dict."""
    return {PREPROCESS_KWARGS[k]: v for k, v in (preprocess or {}).items() if k in PREPROCESS_KWARGS}


def same_preprocess(a: Optional[Dict[str, object]], b: Optional[Dict[str, object]]) -> bool:
    def norm(d):
        return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in (d or {}).items()}
    return norm(a) == norm(b)


# --- training (open_clip_dive.main) ------------------------------------------------------------------
def _resume_checkpoint(args) -> Optional[str]:
    """The checkpoint --resume will load ('latest': the furthest complete one of this run folder, if any)."""
    if not args.resume:
        return None
    if args.resume != "latest":
        return args.resume if os.path.isfile(args.resume) else None
    from .checkpoint import latest_checkpoint

    logs = getattr(args, "logs", None)
    name = getattr(args, "name", None)
    if not logs or not name or "://" in str(logs):
        return None
    folder = os.path.join(logs, name, "checkpoints")
    return latest_checkpoint(folder) if os.path.isdir(folder) else None


def check_training(args) -> None:
    """Start-up check of every set of weights the run loads: --pretrained, --resume, --dive-ref-pretrained."""
    force = bool(getattr(args, "force_quick_gelu", False))
    for flag, value in (("--pretrained", args.pretrained), ("--resume", _resume_checkpoint(args)),
                        ("--dive-ref-pretrained", getattr(args, "dive_ref_pretrained", None))):
        check_activation(flag, value, args.model, force)


def training_preprocess(args, kwargs: Dict[str, object]) -> Dict[str, object]:
    """create_model_and_transforms kwargs of the trainable model, with the preprocessing of the weights it starts
    from: a --pretrained FILE's tag (via its params.txt), else a tagged --dive-ref-pretrained (the frozen model
    sees the same images). open_clip already does this for a --pretrained tag; --image-* flags always win."""
    sources: List[Tuple[str, Trained]] = []
    for flag, value in (("--pretrained", args.pretrained), ("--dive-ref-pretrained", getattr(args, "dive_ref_pretrained", None))):
        trained = trained_with(value, args.model)
        if trained.preprocess:
            sources.append((flag, trained))
    if not sources:
        return kwargs
    flag, chosen = sources[0]
    for other_flag, other in sources[1:]:
        if not same_preprocess(other.preprocess, chosen.preprocess):
            logging.warning(f"{other_flag} was trained with preprocessing {describe(other.preprocess)} "
                            f"({other.source}); training uses that of {flag}: {describe(chosen.preprocess)}")
    if flag == "--pretrained" and tag_config(args.model, args.pretrained):
        return kwargs  # open_clip applies a tag's own preprocessing
    extra = {k: v for k, v in preprocess_kwargs(chosen.preprocess).items() if kwargs.get(k) is None}
    if extra:
        logging.info(f"Image preprocessing of {flag} {getattr(args, flag[2:].replace('-', '_'))}: "
                     f"{describe(chosen.preprocess)} ({chosen.source})")
    return {**kwargs, **extra}
