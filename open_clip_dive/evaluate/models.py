"""Load the models to compare (open_clip names, checkpoints, `local-dir:`), with one-line errors."""

import contextlib
import dataclasses
import os
from typing import Dict, Optional

import torch

from ..errors import DiveUsageError
from ..provenance import preprocess_kwargs, trained_with
from ..speed import channels_last_image_tower


class ModelError(DiveUsageError):
    """One model (run) could not be loaded: reported, the other runs are still evaluated."""


@dataclasses.dataclass
class LoadedModel:
    label: str
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    model_name: str
    pretrained: Optional[str]


def add_model_configs(paths) -> None:
    """`--model-config`: JSON files or folders of them, registered with open_clip (tests use tiny models)."""
    import open_clip

    for path in paths or []:
        if not os.path.exists(path):
            raise DiveUsageError(f"--model-config '{path}' does not exist")
        open_clip.add_model_config(path)


def load_model(label: str, model_name: str, pretrained: Optional[str], device="cpu", force_quick_gelu: bool = False,
               preprocess: Optional[Dict[str, object]] = None) -> LoadedModel:
    """`preprocess`: the mean / std / interpolation / resize mode to use instead of what open_clip would pick for
    this `pretrained` (one evaluation uses one preprocessing for every run; see provenance.py)."""
    import open_clip

    checkpoint_over_local_dir = None
    if pretrained and pretrained.startswith("local-dir:"):
        model_name, pretrained = pretrained, None  # the folder carries its own config
    elif pretrained and (os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors", ".pth"))):
        if not os.path.isfile(pretrained):
            raise ModelError(f"run '{label}': checkpoint '{pretrained}' does not exist")
    if pretrained and model_name.startswith(("local-dir:", "hf-hub:")):
        # open_clip ignores `pretrained` for schema models: build from the folder, then load the checkpoint
        checkpoint_over_local_dir, pretrained = pretrained, None
    known = model_name.startswith(("local-dir:", "hf-hub:")) or model_name in open_clip.list_models()
    if not known:
        raise ModelError(f"run '{label}': unknown model '{model_name}'; see open_clip.list_models(), or register a "
                         f"config with --model-config FILE")
    try:
        model, _, transform = open_clip.create_model_and_transforms(  # amp: autocast over fp32 weights
            model_name, pretrained=pretrained, device=device, precision="fp32", force_quick_gelu=force_quick_gelu,
            **preprocess_kwargs(preprocess))
        if checkpoint_over_local_dir:
            open_clip.load_checkpoint(model, checkpoint_over_local_dir, device=device)
            pretrained = checkpoint_over_local_dir
    except RuntimeError as e:
        pretrained = checkpoint_over_local_dir or pretrained  # name the file, not None
        text = str(e)
        if "size mismatch" in text or "Missing key" in text or "Unexpected key" in text:
            detail = next((line.strip() for line in text.splitlines() if "size mismatch" in line or "key" in line), "")
            hint = trained_with(pretrained, model_name).model if pretrained else None
            hint = f"; its params.txt says --model {hint}" if hint and hint != model_name else ""
            raise ModelError(f"run '{label}': checkpoint '{pretrained}' is for another architecture than --model "
                             f"{model_name} ({detail[:160]}){hint}") from None
        raise ModelError(f"run '{label}': could not load {model_name} / {pretrained}: {text.splitlines()[0]}") from None
    except Exception as e:  # unpickling errors, missing hub weights offline, ...
        pretrained = checkpoint_over_local_dir or pretrained
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"run '{label}': could not load {model_name} / {pretrained}: {first}") from None
    model.eval()
    channels_last_image_tower(model)  # ~1.7x faster for the default EfficientNet tower on CPU
    tokenizer = open_clip.get_tokenizer(model_name)
    return LoadedModel(label, model, transform, tokenizer, model_name, pretrained)


def autocast_for(precision: str, device) -> "contextlib.AbstractContextManager":
    """A zero-argument factory of the autocast context open_clip's --precision implies."""
    device_type = torch.device(device).type
    if precision in ("amp", "amp_bf16", "amp_bfloat16"):
        dtype = torch.bfloat16 if precision != "amp" or device_type == "cpu" else torch.float16
        return lambda: torch.autocast(device_type=device_type, dtype=dtype)
    return contextlib.nullcontext


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model
